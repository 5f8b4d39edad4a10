# Helpers shared by the check scripts (sourced): a free loopback port, and waiting for a
# process to answer on a URL (showing its log if it exits or never answers).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { # url pid log
  for _ in $(seq 1 100); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then echo "process exited early:"; cat "$3"; exit 1; fi
    sleep 0.1
  done
  echo "$1 never answered"; cat "$3"; exit 1
}
