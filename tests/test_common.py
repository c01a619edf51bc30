"""helpers/common.py: argument parsing, one-line errors, atomic writes, teacher loading errors."""
import dataclasses
from typing import List, Optional

import pytest

from helpers import common, devices
import kit
from helpers import models


@dataclasses.dataclass
class _Args:
    name: str = dataclasses.field(default="a", metadata={"help": "a name", "choices": ["a", "b"]})
    steps: int = 3
    lr: float = 0.5
    limit: Optional[int] = None
    fast: bool = False
    tags: List[str] = dataclasses.field(default_factory=lambda: ["x"])


def test_parse_args_types_defaults_and_flags():
    a = common.parse_args(_Args, [])
    assert a == _Args()
    a = common.parse_args(_Args, ["--name", "b", "--steps", "7", "--lr", "1e-3", "--limit", "4", "--fast",
                                  "--tags", "p", "q"])
    assert (a.name, a.steps, a.lr, a.limit, a.fast, a.tags) == ("b", 7, 1e-3, 4, True, ["p", "q"])
    assert common.parse_args(_Args, ["--no-fast"]).fast is False
    with pytest.raises(SystemExit) as e:  # argparse: bad choice -> usage + exit 2
        common.parse_args(_Args, ["--name", "c"])
    assert e.value.code == 2


def test_entrypoint_turns_user_errors_into_one_line(capsys):
    @common.entrypoint
    def main(argv=None):
        common.require(argv == ["ok"], "bad input: say ok")
        return 1
    assert main(["ok"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["no"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: bad input: say ok\n"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    common.save_json({"v": 1}, path)
    with pytest.raises(RuntimeError):
        with common.atomic_write(path, "w") as f:
            f.write('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind
    with pytest.raises(ValueError):  # NaN is not JSON: refuse rather than write an unreadable file
        common.save_json({"v": float("nan")}, path)


def test_teacher_and_student_errors(tiny_teacher, tmp_path):
    t = models.load_teacher(tiny_teacher, None)
    assert (t.image_size, t.embed_dim) == (64, 32)
    assert not any(p.requires_grad for p in t.model.parameters()) and not t.model.training
    with pytest.raises(common.UserError, match="unknown timm model"):
        models.build_student("no_such_net", 32)
    with pytest.raises(common.UserError, match="does not exist"):
        models.load_student(tmp_path / "missing.pt")
    s = models.build_student("test_vit", 32, image_size=32)
    ckpt = models.student_checkpoint(s, t, classnames=["a"], templates=["{c}"], dataset=None)
    common.save_torch(ckpt, tmp_path / "s.pt")
    loaded, meta = models.load_student(tmp_path / "s.pt")
    assert meta["image_size"] == 32 and meta["teacher"] == t.ident
    for k, v in s.state_dict().items():
        assert (loaded.state_dict()[k] == v).all()


def test_teacher_from_builtin_name_and_weights_file(tiny_teacher, tmp_path):
    """The third way to name a teacher: an open_clip architecture name + a local weights file."""
    import json

    import open_clip
    import torch
    folder = tiny_teacher[len("local-dir:"):]
    cfg = json.loads(open(f"{folder}/open_clip_config.json").read())["model_cfg"]
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "zsd-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")  # registers the architecture under a built-in name
    weights = tmp_path / "tiny.bin"
    weights.write_bytes(open(f"{folder}/open_clip_pytorch_model.bin", "rb").read())
    t = models.load_teacher("zsd-tiny-test", str(weights))
    ref = models.load_teacher(tiny_teacher, None)
    assert t.pretrained == str(weights.resolve()) and t.ident["model"] == "zsd-tiny-test"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(t.model.encode_image(x), ref.model.encode_image(x))
    with pytest.raises(common.UserError, match="unknown pretrained tag"):
        models.load_teacher("zsd-tiny-test", str(tmp_path / "missing.bin"))


# ----------------------------------------------------------------------------------------------
# autocast: bf16 on CUDA; on CPU only when ZSD_CPU_BF16 asks for it (tests of bf16 numerics)

def test_autocast_on_cpu_only_when_asked(monkeypatch):
    import torch
    cpu = torch.device("cpu")
    monkeypatch.delenv("ZSD_CPU_BF16", raising=False)
    with devices.autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("ZSD_CPU_BF16", "1")  # read at call time
    with devices.autocast(cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with devices.autocast(cpu, enabled=False):  # --no-amp still wins
        assert not torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------------------------
# the hub probe: offline only when asked, or when the first hop (the proxy, else HF_ENDPOINT) does not answer

@pytest.fixture
def online(monkeypatch):
    """Offline mode off; no proxy variables; the machine has no network (connections leave only to 127.0.0.1).
    Yields the list of (host, port) the probe connected to."""
    import socket

    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", "https://huggingface.co")
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    probed, connect = [], socket.create_connection

    def no_network(address, *a, **k):
        probed.append(tuple(address))
        if address[0] != "127.0.0.1":
            raise OSError(101, "Network is unreachable")
        return connect(address, *a, **k)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return probed


@pytest.fixture
def listening():
    """Port of a socket listening on 127.0.0.1 (a proxy or a hub mirror that answers)."""
    import socket
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def _closed_port():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def test_hub_probe_goes_through_https_proxy(online, listening, monkeypatch):
    import os
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening}")
    assert models.hub_offline() is False
    assert online == [("127.0.0.1", listening)] and os.environ["HF_HUB_OFFLINE"] == "0"


def test_hub_probe_dead_proxy_forces_offline(online, monkeypatch):
    import os

    import huggingface_hub.constants as hc
    port = _closed_port()
    monkeypatch.setenv("https_proxy", f"127.0.0.1:{port}")  # no scheme, lower case: both are common
    assert models.hub_offline() is True
    assert online == [("127.0.0.1", port)] and os.environ["HF_HUB_OFFLINE"] == "1" and hc.HF_HUB_OFFLINE


def test_hub_probe_uses_hf_endpoint(online, listening, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening}")
    monkeypatch.setattr(hc, "ENDPOINT", f"http://127.0.0.1:{listening}")  # huggingface_hub read it at import
    assert models.hub_offline() is False and online == [("127.0.0.1", listening)]


def test_hub_probe_no_proxy_bypasses_the_proxy(online, listening, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(hc, "ENDPOINT", f"https://127.0.0.1:{listening}")
    assert models.hub_offline() is False and online == [("127.0.0.1", listening)]


def test_hub_offline_when_asked_without_probe(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert models.hub_offline() is True and online == []


def test_hub_probe_bad_proxy_port_is_one_error(online, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:80x")
    with pytest.raises(common.UserError, match="no valid port"):
        models.hub_offline()


def test_a_loader_out_of_shared_memory_is_one_line_with_the_fix(capsys):
    @common.entrypoint
    def main(argv=None):  # torch's own message when a worker dies of a full /dev/shm
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that "
                           "dataloader's workers are out of shared memory. Please try to raise your shared memory "
                           "limit.")
    line = kit.exits_with_one_line(main, [], capsys, "--ipc=host")
    assert "fewer --workers" in line

    @common.entrypoint
    def other(argv=None):
        raise RuntimeError("some other failure")
    with pytest.raises(RuntimeError):
        other([])
