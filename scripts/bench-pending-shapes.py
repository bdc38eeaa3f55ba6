"""100,000 pending jobs: GET /api/jobs/pending-shapes and claims with and without a deadline, timed
(the real server, built by `cargo build`; requests from this script). Usage, from the repository:
python3 scripts/bench-pending-shapes.py (docs/benchmarks.md, issue #39)."""
import json, subprocess, time, urllib.request, os, statistics, tempfile
server = os.path.abspath("target/debug/server")
os.chdir(tempfile.mkdtemp())
srv = subprocess.Popen([server, "serve", "--db", "s.db", "--listen", "127.0.0.1:18123", "--token", "admin"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
B = "http://127.0.0.1:18123"
def call(path, body=None, headers=None):
    h = {"Authorization": "Bearer admin", "Content-Type": "application/json", **(headers or {})}
    r = urllib.request.Request(B + path, data=None if body is None else json.dumps(body).encode(), headers=h)
    t = time.perf_counter()
    with urllib.request.urlopen(r) as resp:
        data = resp.read()
        return time.perf_counter() - t, resp.status, (json.loads(data) if data else None)
try:
    for _ in range(50):
        try:
            call("/healthz"); break
        except Exception:
            time.sleep(0.2)
    t, s, _ = call("/api/sweeps", {"name": "big", "train": {"dataset": "synthetic", "epochs": 2}, "grid": {"seed": list(range(100000))}})
    print(f"submit 100,000 jobs: {t:.2f} s")
    ts = [call("/api/jobs/pending-shapes")[0] for _ in range(7)]
    print(f"pending-shapes at 100,000 pending: median {statistics.median(ts)*1000:.1f} ms (min {min(ts)*1000:.1f}, max {max(ts)*1000:.1f})")
    # One job's epoch takes 1 s: its sweep's estimate for the shape.
    _, _, c = call("/api/jobs/claim", {"worker": "w0"})
    time.sleep(1.0)
    call(f"/api/jobs/{c['id']}/metrics", {"attempt": c["attempt"], "epoch": 1, "accuracy": 0.5}, {"X-Lease-Secret": c["lease_secret"]})
    print(call("/api/jobs/pending-shapes")[2])
    plain = [call("/api/jobs/claim", {"worker": f"p{i}"})[0] for i in range(7)]
    now = int(time.time() * 1000)
    late = []
    for i in range(7):
        t, s, _ = call("/api/jobs/claim", {"worker": f"d{i}", "deadline": now + 100})
        assert s == 204, s
        late.append(t)
    print(f"claim, no deadline: median {statistics.median(plain)*1000:.2f} ms; claim with 0.1 s left (nothing fits: 256 jobs looked at, the head marked): median {statistics.median(late)*1000:.2f} ms")
finally:
    srv.kill()
