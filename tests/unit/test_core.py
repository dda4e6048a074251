"""Unit tests for the core plumbing: errors, config, registry, logging, reports, _utils."""

from __future__ import annotations

import copy
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hardenkit
import hardenkit.registry as registry_mod
from hardenkit import errors
from hardenkit._utils.environment import environment_info, parameter_count, state_dict_sha256
from hardenkit._utils.progress import (
    HeartbeatProgress,
    NullProgress,
    ProgressCallback,
    TqdmProgress,
    make_progress,
)
from hardenkit._utils.seeding import make_generator, seed_everything
from hardenkit.config import Normalization, RuntimeConfig, parse_config
from hardenkit.errors import (
    ConfigError,
    DataError,
    DeviceError,
    ExecutionProviderError,
    ExportError,
    HardenkitError,
    HardenkitWarning,
    ModelCompatibilityError,
    ParityError,
    RegistryError,
    UnsafeArtifactError,
)
from hardenkit.logging import configure_logging, get_logger
from hardenkit.registry import Registry
from hardenkit.reports import BaseReport, EnvironmentInfo, ModelFingerprint

# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

BUILTIN_PARENT = [
    (DataError, ValueError),
    (ConfigError, ValueError),
    (RegistryError, KeyError),
    (ModelCompatibilityError, TypeError),
]


@pytest.mark.parametrize(("cls", "builtin"), BUILTIN_PARENT)
def test_error_subclasses_hardenkit_error_and_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, HardenkitError)
    assert issubclass(cls, builtin)
    with pytest.raises(builtin) as info:
        raise cls("boom")
    assert isinstance(info.value, HardenkitError)
    assert info.value.exit_code == 2


def test_every_exported_error_is_a_hardenkit_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if name == "HardenkitWarning":
            assert issubclass(obj, UserWarning)
            assert not issubclass(obj, HardenkitError)
        else:
            assert issubclass(obj, HardenkitError), name


def test_export_error_family_has_runtime_exit_code() -> None:
    for cls in (ExportError, ExecutionProviderError):
        assert issubclass(cls, ExportError)
        assert cls("x").exit_code == 3
    assert issubclass(ParityError, ExportError)
    assert ParityError("x").exit_code == 1  # a check that ran and failed
    assert UnsafeArtifactError("x").exit_code == 2
    assert issubclass(HardenkitWarning, UserWarning)


def test_registry_error_str_is_not_repr_quoted() -> None:
    exc = RegistryError("Unknown model 'foo'.")
    # a plain KeyError would render as "\"Unknown model 'foo'.\""
    assert str(exc) == "Unknown model 'foo'."
    assert KeyError("plain").__str__() == "'plain'"  # the behaviour being overridden


def test_hint_is_appended_to_message() -> None:
    exc = DataError("expected pixels in [0, 1].", hint="divide by 255")
    assert exc.message == "expected pixels in [0, 1]."
    assert exc.hint == "divide by 255"
    assert str(exc) == "expected pixels in [0, 1]. Fix: divide by 255"
    assert exc.args[0] == str(exc)
    assert str(DataError("no hint")) == "no hint"
    assert DataError("no hint").hint is None
    reg = RegistryError("missing", hint="register it")
    assert str(reg) == "missing Fix: register it"


def test_config_error_and_unsafe_artifact_error_extra_fields() -> None:
    assert ConfigError("x").errors == []
    assert ConfigError("x", errors=[{"loc": ("a",)}]).errors == [{"loc": ("a",)}]
    assert UnsafeArtifactError("x").unsafe_globals == []
    exc = UnsafeArtifactError("x", unsafe_globals=["os.system"])
    assert exc.unsafe_globals == ["os.system"]
    assert not isinstance(exc, ValueError)


def test_errors_are_reexported_from_package() -> None:
    for name in ("ConfigError", "DataError", "RegistryError", "UnsafeArtifactError"):
        assert getattr(hardenkit, name) is getattr(errors, name)


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------


def test_runtime_config_defaults() -> None:
    rt = RuntimeConfig()
    assert rt.device == "auto"
    assert rt.seed == 0
    assert rt.amp == "auto"
    assert rt.progress == "auto"
    assert rt.input_normalization is None
    assert rt.deterministic is False


def test_runtime_config_is_frozen() -> None:
    rt = RuntimeConfig(seed=3)
    with pytest.raises(ValueError, match="frozen"):
        rt.seed = 4  # type: ignore[misc]
    assert rt.seed == 3


def test_runtime_config_rejects_extra_keys_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(devcie="cpu")  # type: ignore[call-arg]
    assert "devcie" in str(info.value)
    assert "RuntimeConfig" in str(info.value)
    assert info.value.errors, "pydantic error details are kept"
    assert isinstance(info.value, ValueError)


def test_runtime_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="seed"):
        RuntimeConfig(seed=-1)
    with pytest.raises(ConfigError, match="progress"):
        RuntimeConfig(progress="loud")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="progress"):
        RuntimeConfig(progress=1)  # type: ignore[arg-type]


def test_runtime_config_progress_takes_booleans() -> None:
    # what a Python caller writes, and what YAML 1.1 reads `progress: off` as
    assert RuntimeConfig(progress=False).progress == "off"  # type: ignore[arg-type]
    assert RuntimeConfig(progress=True).progress == "on"  # type: ignore[arg-type]
    assert RuntimeConfig.model_validate({"progress": False}).progress == "off"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        (" cuda ", "cuda"),
        ("cuda:1", "cuda:1"),
        ("CUDA:12", "cuda:12"),
        ("auto", "auto"),
        ("mps", "mps"),
    ],
)
def test_device_parsing(given: str, expected: str) -> None:
    assert RuntimeConfig(device=given).device == expected


@pytest.mark.parametrize("bad", ["tpu", "cuda:", "cuda:x", "cuda:-1", "graphics", ""])
def test_device_parsing_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        RuntimeConfig(device=bad)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_resolve_device_raises_device_error_without_cuda(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device") as info:
        RuntimeConfig(device=device).resolve_device()
    assert device in str(info.value)
    assert info.value.hint is not None
    assert isinstance(info.value, RuntimeError)
    assert info.value.exit_code == 3  # environment error, not a usage error


def test_input_normalization_accepts_mean_std_pair() -> None:
    rt = RuntimeConfig(input_normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert rt.input_normalization is not None
    assert rt.input_normalization.mean == (0.5, 0.5, 0.5)
    assert rt.input_normalization.std == (0.25, 0.25, 0.25)


def test_resolve_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RuntimeConfig(device="cpu").resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert RuntimeConfig(device="auto").resolve_device() == torch.device("cpu")


def test_resolve_device_on_this_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError):
        RuntimeConfig(device="cuda").resolve_device()


def test_use_amp() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for amp in (True, False, "auto"):
        assert RuntimeConfig(amp=amp).use_amp(cpu) is False
    assert RuntimeConfig(amp="auto").use_amp(cuda) is True
    assert RuntimeConfig(amp=True).use_amp(cuda) is True
    assert RuntimeConfig(amp=False).use_amp(cuda) is False


def test_input_normalization_from_dict() -> None:
    rt = RuntimeConfig(input_normalization={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]})
    assert isinstance(rt.input_normalization, Normalization)
    assert rt.input_normalization.mean == (0.5, 0.4, 0.3)
    assert rt.input_normalization.std == (0.2, 0.2, 0.25)


@pytest.mark.parametrize(
    "norm",
    [
        {"mean": [0.5, 0.5], "std": [0.2]},  # length mismatch
        {"mean": [], "std": []},  # empty
        {"mean": [0.5], "std": [0.0]},  # zero std
        {"mean": [0.5], "std": [-1.0]},  # negative std
        {"mean": [0.5], "std": [float("inf")]},  # non-finite std
        {"mean": [0.5]},  # missing std
    ],
)
def test_input_normalization_validation(norm: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="input_normalization"):
        RuntimeConfig(input_normalization=norm)
    with pytest.raises(ConfigError, match="Normalization"):
        Normalization(**norm)


def test_parse_config_variants() -> None:
    default = parse_config(RuntimeConfig, None)
    assert default == RuntimeConfig()
    from_dict = parse_config(RuntimeConfig, {"seed": 7, "device": "cpu"})
    assert isinstance(from_dict, RuntimeConfig)
    assert (from_dict.seed, from_dict.device) == (7, "cpu")
    inst = RuntimeConfig(seed=9)
    assert parse_config(RuntimeConfig, inst) is inst
    with pytest.raises(ConfigError, match="seeed"):
        parse_config(RuntimeConfig, {"seeed": 1})


@pytest.mark.parametrize("bad", ["cpu", 3, ["seed", 1], Normalization(mean=(0.5,), std=(0.2,))])
def test_parse_config_rejects_bad_type(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(RuntimeConfig, bad)  # type: ignore[arg-type]
    assert "RuntimeConfig" in str(info.value)
    assert type(bad).__name__ in str(info.value)


def test_with_updates_returns_validated_copy() -> None:
    rt = RuntimeConfig(seed=1, device="cpu", input_normalization={"mean": [0.5], "std": [0.5]})
    new = rt.with_updates(seed=5)
    assert new.seed == 5
    assert rt.seed == 1
    assert new.device == "cpu"
    assert new.input_normalization == rt.input_normalization
    assert new is not rt
    with pytest.raises(ConfigError, match="seed"):
        rt.with_updates(seed=-2)
    with pytest.raises(ConfigError, match="nope"):
        rt.with_updates(nope=1)


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint (name, value, load())."""

    def __init__(self, name: str, value: str, obj: object = None, error: Exception | None = None):
        self.name = name
        self.value = value
        self._obj = obj
        self._error = error
        self.loaded = 0

    def load(self) -> object:
        self.loaded += 1
        if self._error is not None:
            raise self._error
        return self._obj


def _plugin_thing() -> str:
    return "from plugin"


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, group: str, eps: list[FakeEntryPoint]):
    calls: list[str] = []
    wanted = group

    def fake(*, group: str) -> list[FakeEntryPoint]:
        calls.append(group)
        return eps if group == wanted else []

    monkeypatch.setattr(registry_mod, "entry_points", fake)
    return calls


def test_registry_register_get_case_insensitive() -> None:
    reg: Registry[int] = Registry("shape")
    assert reg.register("  Square ", 4) == 4
    assert reg.get("square") == 4
    assert reg.get("SQUARE") == 4
    assert "Square" in reg
    assert "circle" not in reg
    assert 4 not in reg  # non-str keys are never contained
    assert reg.names() == ["square"]
    assert list(reg) == ["square"]
    assert len(reg) == 1


def test_registry_decorator_and_unregister() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.decorator("Foo")
    def foo() -> int:
        return 1

    assert reg.get("foo") is foo
    reg.unregister("FOO")
    assert "foo" not in reg
    reg.unregister("never-registered")  # no error


def test_registry_duplicate_raises_unless_override() -> None:
    reg: Registry[object] = Registry("shape")
    reg.register("a", 1)
    with pytest.raises(RegistryError, match="already registered") as info:
        reg.register("A", 2)
    assert isinstance(info.value, KeyError)
    assert "override=True" in str(info.value)
    assert reg.get("a") == 1
    reg.register("a", 2, override=True)
    assert reg.get("a") == 2
    # re-registering the very same object is idempotent
    obj = object()
    reg.register("same", obj)
    assert reg.register("same", obj) is obj


def test_registry_empty_name_rejected() -> None:
    reg: Registry[int] = Registry("shape")
    with pytest.raises(RegistryError, match="non-empty"):
        reg.register("   ", 1)


def test_registry_unknown_lists_available() -> None:
    reg: Registry[int] = Registry("shape")
    reg.register("square", 4)
    reg.register("triangle", 3)
    with pytest.raises(RegistryError) as info:
        reg.get("circle")
    msg = str(info.value)
    assert "Unknown shape 'circle'" in msg
    assert "square, triangle" in msg
    assert not msg.startswith(("'", '"'))
    empty: Registry[int] = Registry("widget")
    with pytest.raises(RegistryError, match=r"\(none\)"):
        empty.get("x")


def test_registry_discovers_entry_point_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARDENKIT_DISABLE_PLUGINS", raising=False)
    ep = FakeEntryPoint("Plugged", "fake_pkg.mod:thing", obj=_plugin_thing)
    calls = _fake_entry_points(monkeypatch, "hardenkit.widgets", [ep])
    reg: Registry[object] = Registry("widget", entry_point_group="hardenkit.widgets")
    reg.register("builtin", 1)
    assert reg.get("builtin") == 1
    assert calls == []  # a hit never triggers discovery
    assert reg.get("plugged") is _plugin_thing
    assert calls == ["hardenkit.widgets"]
    assert ep.loaded == 1
    assert reg.names() == ["builtin", "plugged"]
    assert calls == ["hardenkit.widgets"]  # discovery runs once


def _check_broken_plugin_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARDENKIT_DISABLE_PLUGINS", raising=False)
    broken = FakeEntryPoint("broken", "bad_pkg:thing", error=ImportError("no module bad_pkg"))
    good = FakeEntryPoint("good", "good_pkg:thing", obj=_plugin_thing)
    _fake_entry_points(monkeypatch, "hardenkit.widgets", [broken, good])
    reg: Registry[object] = Registry("widget", entry_point_group="hardenkit.widgets")
    assert reg.names() == ["good"]
    assert broken.loaded == 1
    with pytest.raises(RegistryError, match="Available: good"):
        reg.get("broken")


def _check_plugin_does_not_shadow_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARDENKIT_DISABLE_PLUGINS", raising=False)
    ep = FakeEntryPoint("builtin", "evil:thing", obj="evil")
    _fake_entry_points(monkeypatch, "hardenkit.widgets", [ep])
    reg: Registry[object] = Registry("widget", entry_point_group="hardenkit.widgets")
    reg.register("builtin", "real")
    assert reg.names() == ["builtin"]
    assert reg.get("builtin") == "real"
    assert ep.loaded == 0


def test_registry_skips_broken_plugin_when_warnings_filtered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With the registry's warnings filtered out the skip logic itself works.
    caplog.set_level(logging.ERROR, logger="hardenkit.registry")
    _check_broken_plugin_skipped(monkeypatch)


def test_registry_plugin_does_not_shadow_builtin_when_warnings_filtered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hardenkit.registry")
    _check_plugin_does_not_shadow_builtin(monkeypatch)


def test_registry_skips_broken_plugin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hardenkit")
    _check_broken_plugin_skipped(monkeypatch)
    assert any("plugin_failed" in r.getMessage() for r in caplog.records)


def test_registry_plugin_does_not_shadow_builtin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hardenkit")
    _check_plugin_does_not_shadow_builtin(monkeypatch)
    assert any("plugin_shadowed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_registry_plugins_disabled_by_env(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HARDENKIT_DISABLE_PLUGINS", value)
    ep = FakeEntryPoint("plugged", "fake_pkg:thing", obj=_plugin_thing)
    calls = _fake_entry_points(monkeypatch, "hardenkit.widgets", [ep])
    reg: Registry[object] = Registry("widget", entry_point_group="hardenkit.widgets")
    with pytest.raises(RegistryError):
        reg.get("plugged")
    assert calls == []
    assert ep.loaded == 0


def test_registry_without_group_never_discovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARDENKIT_DISABLE_PLUGINS", raising=False)
    calls = _fake_entry_points(monkeypatch, "hardenkit.widgets", [])
    reg: Registry[object] = Registry("widget")
    assert reg.names() == []
    assert calls == []


# --------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------


@pytest.fixture
def restore_hardenkit_logger():
    logger = logging.getLogger("hardenkit")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


def test_library_logging_is_silent_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    log = get_logger("test_core")
    log.info("core.info_event", answer=42)
    log.warning("core.warning_event", answer=43)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ""
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("hardenkit").handlers)


def test_library_logging_is_silent_in_a_fresh_interpreter() -> None:
    code = (
        "from hardenkit.logging import get_logger\n"
        "log = get_logger('fresh')\n"
        "log.info('fresh.info', a=1)\n"
        "log.warning('fresh.warning', a=2)\n"
        "log.error('fresh.error', a=3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_logger_name_prefixed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hardenkit")
    get_logger("mything").info("a.event", answer=42)
    get_logger("hardenkit.other").info("b.event")
    names = [r.name for r in caplog.records]
    assert names == ["hardenkit.mything", "hardenkit.other"]
    assert caplog.records[0].getMessage() == "a.event"
    assert caplog.records[0].answer == 42  # type: ignore[attr-defined]


def test_configure_logging_json(
    capsys: pytest.CaptureFixture[str], restore_hardenkit_logger: logging.Logger
) -> None:
    configure_logging("json", level="debug")
    configure_logging("json", level="INFO")  # idempotent: no duplicate handler
    cli_handlers = [
        h for h in restore_hardenkit_logger.handlers if getattr(h, "_hardenkit_cli", False)
    ]
    assert len(cli_handlers) == 1
    get_logger("test_json").info("core.json_event", answer=42, tag="x")
    get_logger("test_json").debug("core.hidden_debug")  # below INFO
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    payload = json.loads(lines[0])
    assert payload["event"] == "core.json_event"
    assert payload["answer"] == 42
    assert payload["tag"] == "x"
    assert payload["level"] == "info"
    assert payload["logger"] == "hardenkit.test_json"
    assert "timestamp" in payload


def test_configure_logging_console(
    capsys: pytest.CaptureFixture[str], restore_hardenkit_logger: logging.Logger
) -> None:
    configure_logging("console")
    get_logger("test_console").warning("core.console_event", answer=7)
    err = capsys.readouterr().err
    assert "core.console_event" in err
    assert "answer=7" in err
    assert err.lstrip().startswith("warning")


def test_configure_logging_auto_is_json_when_not_a_tty(
    capsys: pytest.CaptureFixture[str], restore_hardenkit_logger: logging.Logger
) -> None:
    configure_logging("auto")
    get_logger("test_auto").info("core.auto_event")
    payload = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert payload["event"] == "core.auto_event"


# --------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------


def test_model_fingerprint_stable_and_sensitive() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    fp1 = ModelFingerprint.of(model)
    fp2 = ModelFingerprint.of(model)
    fp_copy = ModelFingerprint.of(copy.deepcopy(model))
    assert fp1 == fp2 == fp_copy
    assert len(fp1.sha256) == 64
    assert fp1.num_parameters == 4 * 3 + 3 + 3 + 3
    assert fp1.num_tensors == len(model.state_dict())  # includes BN buffers
    assert fp1.model_class == "torch.nn.modules.container.Sequential"
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    assert ModelFingerprint.of(model).sha256 != fp1.sha256
    # a buffer change is also a different model
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].running_mean += 1.0
    assert ModelFingerprint.of(other).sha256 != ModelFingerprint.of(model).sha256


def test_state_dict_sha256_depends_on_dtype_and_names() -> None:
    a = nn.Linear(2, 2)
    b = copy.deepcopy(a).double()
    assert state_dict_sha256(a) != state_dict_sha256(b)
    c = nn.Sequential(copy.deepcopy(a))  # same bytes, different key names
    assert state_dict_sha256(a) != state_dict_sha256(c)
    assert parameter_count(a) == 6


def test_base_report_json_round_trip(tmp_path: Path) -> None:
    report = BaseReport()
    data = json.loads(report.to_json())
    assert data["schema_version"] == BaseReport.SCHEMA_VERSION == "1.0"
    assert data["report_type"] == "base"
    assert data["environment"]["torch"] == torch.__version__
    assert data["environment"]["hardenkit"] == hardenkit.__version__
    assert data["hardenkit_version"] == hardenkit.__version__
    assert len(data["report_id"]) == 32
    back = BaseReport.model_validate_json(report.to_json())
    assert back == report
    assert BaseReport().report_id != report.report_id
    path = report.save(tmp_path / "nested" / "dir" / "report.json")
    assert path == tmp_path / "nested" / "dir" / "report.json"
    saved = json.loads(path.read_text())
    assert saved == data
    assert not list(path.parent.glob("*.tmp"))


def test_base_report_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="bogus"):
        BaseReport(bogus=1)  # type: ignore[call-arg]


def test_environment_info_current() -> None:
    env = EnvironmentInfo.current()
    info = environment_info()
    assert env.torch == torch.__version__ == info["torch"]
    assert env.cuda_available == torch.cuda.is_available()
    assert env.torch_threads == torch.get_num_threads()
    assert env.python == sys.version.split()[0]
    assert env.numpy == np.__version__


# --------------------------------------------------------------------------------------
# _utils.progress
# --------------------------------------------------------------------------------------


def test_make_progress_off_is_null() -> None:
    p = make_progress("off")
    assert isinstance(p, NullProgress)
    assert p("phase", 1, 2, loss=0.5) is None
    assert isinstance(p, ProgressCallback)


def test_make_progress_explicit_callback_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    def cb(phase: str, step: int, total: int, **info: object) -> None:
        calls.append((phase, step, total))

    monkeypatch.setenv("TQDM_DISABLE", "1")
    for mode in ("off", "on", "auto"):
        assert make_progress(mode, cb) is cb  # type: ignore[arg-type]
    make_progress("off", cb)("p", 1, 3)
    assert calls == [("p", 1, 3)]


def test_make_progress_respects_tqdm_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert isinstance(make_progress("on"), NullProgress)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert isinstance(make_progress("on"), TqdmProgress)
    monkeypatch.delenv("TQDM_DISABLE")
    assert isinstance(make_progress("on"), TqdmProgress)


def test_make_progress_auto_follows_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)

    class FakeStderr:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

        def write(self, s: str) -> int:
            return len(s)

        def flush(self) -> None:
            return None

    monkeypatch.setattr(sys, "stderr", FakeStderr(False))
    # not a terminal (CI logs): heartbeat lines instead of a bar
    assert isinstance(make_progress("auto"), HeartbeatProgress)
    monkeypatch.setattr(sys, "stderr", FakeStderr(True))
    assert isinstance(make_progress("auto"), TqdmProgress)


def test_make_progress_without_tqdm_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    import hardenkit._utils.progress as progress_mod

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(progress_mod, "is_available", lambda name: False)
    assert isinstance(make_progress("on"), NullProgress)


def test_tqdm_progress_closes_finished_bars(capsys: pytest.CaptureFixture[str]) -> None:
    p = TqdmProgress()
    p("train", 1, 3, loss=0.1234567)
    p("eval", 1, 2)
    assert set(p._bars) == {"train", "eval"}
    p("train", 3, 3)
    assert set(p._bars) == {"eval"}
    p.close()
    assert p._bars == {}
    capsys.readouterr()


# --------------------------------------------------------------------------------------
# _utils.seeding
# --------------------------------------------------------------------------------------


def test_seed_everything_is_reproducible() -> None:
    def draw(seed: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        g = seed_everything(seed)
        return random.random(), float(np.random.rand()), torch.rand(3), torch.rand(3, generator=g)

    a, b, c = draw(5), draw(5), draw(6)
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert torch.equal(a[2], b[2])
    assert torch.equal(a[3], b[3])
    assert a[0] != c[0]
    assert a[1] != c[1]
    assert not torch.equal(a[2], c[2])
    seed_everything(2**40)  # seeds beyond numpy's 32-bit range are accepted


def test_make_generator() -> None:
    g1, g2, g3 = make_generator(3), make_generator(3), make_generator(4)
    assert g1.device == torch.device("cpu")
    x1, x2, x3 = (torch.rand(5, generator=g) for g in (g1, g2, g3))
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)
