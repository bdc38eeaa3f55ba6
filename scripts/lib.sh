# Shared by the scripts: sourced, never run.

# wait_for_listening FILE [SECONDS]: waits until `server serve`'s first stdout line (written to FILE)
# says where it listens, and prints that URL. Fails (exit status 1, the reason on stderr) when the
# line has not come within SECONDS (default 30), so a script never carries on with an empty URL.
wait_for_listening() {
  local file=$1 limit=${2:-30} url=""
  local deadline=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    url=$(sed -n 's/^listening on //p' "$file" 2>/dev/null | head -n 1)
    if [ -n "$url" ]; then
      echo "$url"
      return 0
    fi
    sleep 0.1
  done
  echo "the coordinator did not say where it listens within ${limit} s (its stdout: $file)" >&2
  return 1
}

# with_ticker WHAT PATH CMD...: runs CMD, and while it runs prints a line every 20 s saying how
# long WHAT has taken and how large PATH has grown, so a long silent step (pip's torch download,
# the data rebuild) shows it is alive. Returns CMD's exit status.
with_ticker() {
  local what=$1 path=$2
  shift 2
  "$@" &
  local pid=$! t0 n=0 size
  t0=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    n=$((n + 1))
    if [ $((n % 20)) -eq 0 ] && kill -0 "$pid" 2>/dev/null; then
      size=$(du -sm "$path" 2>/dev/null | cut -f1)
      echo "  ... $what: $(( $(date +%s) - t0 )) s so far, ${size:-0} MB in $path"
    fi
  done
  wait "$pid"
}
