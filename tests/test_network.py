"""An embedded run listens on loopback only, and every Ray server refuses a client without the cluster's token.

The session's own processes (this driver, the gcs_server and raylet it started and their descendants: agents, workers)
are listed by PID with psutil during and after a real two-worker run. Documented exceptions to the token: the
read-only Prometheus metrics endpoints of the dashboard agent, the headless dashboard process (port 44227) and the
autoscaler monitor (port 44217) — Ray 2.60 offers no way to turn them off from ray.init — and the training workers'
gloo connections; all bound to 127.0.0.1 like everything else. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# Ray processes whose Prometheus endpoint (read-only metrics) has no token; Ray 2.60 starts them with every instance
METRICS_ONLY = ("ray::DashboardAgent", "dashboard.py", "monitor.py")
# one cheap method of each Ray gRPC service; a server that knows the method checks the token first
GRPC_PROBES = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.NodeManagerService/GetSystemConfig",
               "/ray.rpc.ObjectManagerService/Pull", "/ray.rpc.CoreWorkerService/NumPendingTasks",
               "/ray.rpc.LogService/ListLogs")


def _session_processes(ray) -> list:
    """This process and every descendant of the Ray processes its ray.init started."""
    node = ray._private.worker._global_node
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    procs = {psutil.Process().pid: psutil.Process()}
    for pid in roots:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for p in [root, *root.children(recursive=True)]:
            procs[p.pid] = p
    return list(procs.values())


def _name(p) -> str:
    """The process title Ray gives (ray::…, gcs_server, raylet), or the script a plain python process runs."""
    name = p.name()
    scripts = [a for a in p.cmdline()[1:] if a.endswith(".py")]
    return scripts[0].rsplit("/", 1)[-1] if name.startswith("python") and scripts else name


def _listeners(ray) -> dict[tuple[str, int], str]:
    """(address, port) → process name of every listening TCP socket of the session ('driver': this process)."""
    out = {}
    for p in _session_processes(ray):
        try:
            name = "driver" if p.pid == psutil.Process().pid else _name(p)
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out[(c.laddr.ip, c.laddr.port)] = name
        except psutil.Error:  # exited meanwhile
            continue
    return out


def _grpc_codes(port: int, token: str | None = None) -> set[str]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    metadata = [("authorization", f"Bearer {token}")] if token else None
    codes = set()
    for method in GRPC_PROBES:
        try:
            channel.unary_unary(method)(b"", timeout=5, metadata=metadata)
            codes.add("OK")
        except grpc.RpcError as exc:
            codes.add(exc.code().name)
    channel.close()
    return codes


def _http(port: int, path: str = "/api/job_agent/jobs/x/logs") -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read(200).decode("latin-1")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):  # not HTTP (gRPC answers with binary frames)
        return None, ""


def test_embedded_run_listens_on_loopback_and_ray_refuses_clients_without_the_token(ray_local, digits_shards,
                                                                                  tmp_path):
    from ray._raylet import AuthenticationTokenLoader

    from cluster.launch import run_pretrain
    from cluster.run_config import load_run_config

    ray = ray_local
    cfg = load_run_config(None, ["model.encoder=bb_convnet_tiny", "data.image_size=16", "batch_size=32", "steps=6",
                                 "checkpoint_every=3", "log_every=1", "eval.probe=false", "data.loader_workers=0",
                                 f"data.train={digits_shards['train']}", f"cluster.storage_path={tmp_path}",
                                 "name=net"])
    during: dict[tuple[str, int], str] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            during.update(_listeners(ray))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_pretrain(cfg, show_progress=False)
    finally:
        done.set()
        watcher.join()
    after = _listeners(ray)
    assert any(name == "ray::RayTrainWorker" for name in during.values()), during  # the workers were seen
    exposed = {k: v for k, v in {**during, **after}.items() if k[0] not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {exposed}"

    token = AuthenticationTokenLoader.instance().get_raw_token()
    refused, exceptions = [], []
    for (_, port), name in sorted(after.items(), key=lambda kv: kv[0][1]):
        codes = _grpc_codes(port)
        if name == "driver" and not codes & {"UNAUTHENTICATED", "UNIMPLEMENTED"}:
            continue  # not a gRPC server: another test's loopback server in this pytest process, not Ray's
        if "UNAUTHENTICATED" in codes:
            assert "OK" not in codes, (name, port, codes)
            refused.append(name)
            continue
        status, body = _http(port)
        if status == 401:
            refused.append(name)
            continue
        # servers without the token: the read-only Prometheus metrics of the dashboard agent, the (headless)
        # dashboard process and the autoscaler monitor (loopback only, like everything else)
        assert name in METRICS_ONLY and status == 200 and body.startswith("# HELP"), (name, port, status)
        exceptions.append(name)
    gcs_port = int(ray._private.worker._global_node.gcs_address.rsplit(":", 1)[1])
    assert "OK" in _grpc_codes(gcs_port, token)  # the same call with the cluster's token is accepted
    assert {"driver", "gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(refused), refused
    assert len(exceptions) == len(set(exceptions)), exceptions
