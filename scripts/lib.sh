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
