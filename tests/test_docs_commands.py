"""Every ``hardenkit ...`` command shown in README.md and docs/*.md is a real command.

The commands are the lines starting with ``hardenkit `` in fenced ```bash blocks (``\\``
continuations joined, a trailing ``# comment`` kept apart). Each one is parsed with the real
parser, so a renamed or removed flag fails here. The cheap ones (``models``, ``strategies``,
``doctor``, ``--version``, ``--help``, ``validate``, ``export``) are also *run* in-process on
tiny stand-ins of the files they name, and their exit code must be the documented one
(``# exit N`` after the command, or one of the codes an ``echo $?  # ...`` line lists). The
slow ones (``demo``, ``scan``, ``purify``) run too, on tiny budgets: the scan presets shrink
to a few inversion epochs (:data:`TINY_SCAN`), the demo's synthetic data and training to a
few seconds (:data:`TINY_DEMO`), repairs to a few epochs (:data:`TINY_REPAIR`). A command
that cannot run here would go in :data:`PARSED_ONLY`, with the reason (none at present; the
CUDA doctor check runs and must exit 3 on a host without CUDA).

The ``$ hardenkit models`` / ``$ hardenkit strategies`` output blocks must equal the real
output.
"""

from __future__ import annotations

import re
import shlex
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PARSED_ONLY: dict[str, str] = {
    "hardenkit scan-fleet --ray": "needs a running Ray cluster (`ray start --head`); "
    "tests/unit/test_fleet.py runs the Ray backend on a local one",
}
"""Command prefixes that are parsed but not run, with the reason (the longest prefix wins)."""

RUN: tuple[str, ...] = (
    "hardenkit --version",
    "hardenkit --help",
    "hardenkit models",
    "hardenkit strategies",
    "hardenkit doctor",
    "hardenkit validate",
    "hardenkit export",
    "hardenkit demo",
    "hardenkit scan",
    "hardenkit scan-fleet",
    "hardenkit purify",
    "hardenkit train",
    "hardenkit gate",
    "hardenkit schema",
)
"""Subcommands run in-process (after the global options are dropped)."""

HEAVY_ARCHS = {"preact-resnet18", "resnet18", "vgg16-bn"}
"""Zoo models replaced by ``small-cnn`` when a command is run (same code path, seconds less)."""

TINY = "train_per_class=8,test_per_class=5"
"""What ``--data synthetic[:...]`` becomes when a command is run (a scan needs 5 per class
after its 20 % hold-out)."""

TINY_SCAN: dict[str, object] = {
    "max_images": 80,
    "max_holdout_images": 40,
    "detector_options": {
        "neural-cleanse": {"epochs": 10, "batch_size": 32},
        "mm-bd": {"steps": 40, "starts": 4},
    },
}
"""Every scan budget preset while a documented command runs (the flags stay as documented)."""

TINY_DEMO = {"train_per_class": 40, "test_per_class": 10}
"""The demo's synthetic data while a documented demo runs (its default is 500 / 100)."""

TINY_REPAIR: dict[str, dict[str, object]] = {
    "finetune": {"epochs": 4},
    "nc-unlearn": {"epochs": 4},
    "mcl": {"epochs": 4},
    "d3": {"epochs": 4},
    "auto": {"trigger_config": {"epochs": 4}, "fallback_config": {"epochs": 4}},
}
"""Strategy config defaults while a documented command runs (``--set`` values still win)."""

IMAGES_PER_CLASS = 8
"""Images per class in the stand-in image folders and archives."""

FENCE = re.compile(r"^[ \t]*```bash[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
OUTPUT_FENCE = re.compile(r"^```[a-z]*\n\$ (hardenkit [^\n]*)\n(.*?)^```", re.M | re.S)
EXIT_COMMENT = re.compile(r"^exit (\d+)\b")


@dataclass
class DocCommand:
    where: str
    command: str
    comment: str = ""
    exit_codes: set[int] = field(default_factory=set)
    """Documented exit codes: ``# exit N``, or the codes an ``echo $?`` comment lists."""

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)[1:]

    @property
    def key(self) -> str:
        """``hardenkit <subcommand>`` without global options (``--log-format json`` ...)."""
        argv = self.argv
        rest: list[str] = []
        i = 0
        while i < len(argv):
            if argv[i] in {"--log-format", "--log-level"}:
                i += 2
                continue
            rest = argv[i:]
            break
        return " ".join(["hardenkit", *rest])


def _strip_comment(line: str) -> tuple[str, str]:
    """``cmd  # comment`` → (cmd, comment); a ``#`` inside quotes is not a comment."""
    in_quote: str | None = None
    for i, ch in enumerate(line):
        if in_quote:
            if ch == in_quote:
                in_quote = None
        elif ch in "'\"":
            in_quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def _echo_codes(comment: str) -> set[int]:
    """``0 ok; 1 verification failed, 2 usage error`` → {0, 1, 2}."""
    return {int(m) for m in re.findall(r"(?:^|[;,])\s*(\d+)\b", comment)}


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


def extract_commands(files: list[Path] = DOC_FILES) -> list[DocCommand]:
    out: list[DocCommand] = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            first_line = text.count("\n", 0, block.start(1)) + 1
            lines = block.group(1).splitlines()
            i = 0
            last: DocCommand | None = None
            while i < len(lines):
                start = i
                raw = lines[i]
                code, comment = _strip_comment(raw)
                comments = [comment] if comment else []
                while code.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    nxt, c = _strip_comment(lines[i])
                    code = code[:-1].rstrip() + " " + nxt.strip()
                    if c:
                        comments.append(c)
                i += 1
                stripped = code.strip()
                if stripped.startswith("hardenkit "):
                    cmd = DocCommand(
                        where=f"{_rel(path)}:{first_line + start}",
                        command=" ".join(stripped.split()),
                        comment=" ".join(comments),
                    )
                    m = EXIT_COMMENT.match(cmd.comment)
                    if m:
                        cmd.exit_codes = {int(m.group(1))}
                    out.append(cmd)
                    last = cmd
                elif stripped.startswith("echo $?") and last is not None:
                    # the comment may go on over the next comment-only lines
                    text_ = " ".join(comments)
                    while i < len(lines) and lines[i].strip().startswith("#"):
                        text_ += " " + lines[i].strip().lstrip("#").strip()
                        i += 1
                    if not last.exit_codes:
                        last.exit_codes = _echo_codes(text_)
                elif stripped:
                    last = None
    return out


COMMANDS = extract_commands()
UNIQUE: dict[str, DocCommand] = {}
for _c in COMMANDS:
    UNIQUE.setdefault(_c.command, _c)


def parsed_only_reason(cmd: DocCommand) -> str | None:
    hits = [p for p in PARSED_ONLY if cmd.key == p or cmd.key.startswith(p + " ")]
    return PARSED_ONLY[max(hits, key=len)] if hits else None


def is_run(cmd: DocCommand) -> bool:
    if parsed_only_reason(cmd) is not None:
        return False
    return any(cmd.key == p or cmd.key.startswith(p + " ") for p in RUN) or any(
        a in {"-h", "--help"} for a in cmd.argv
    )


def test_commands_were_found() -> None:
    # the manual shows dozens; a broken extractor would make every other test vacuous
    assert len(COMMANDS) >= 20, [c.command for c in COMMANDS]
    keys = {c.key.split()[1] for c in COMMANDS if len(c.key.split()) > 1}
    assert {"demo", "scan", "purify", "validate", "export", "doctor", "models"} <= keys


def test_every_command_is_run_or_parsed_only() -> None:
    uncovered = [
        f"{c.where}: {c.command}"
        for c in COMMANDS
        if not is_run(c) and parsed_only_reason(c) is None
    ]
    assert not uncovered, "add these to RUN or PARSED_ONLY (with a reason):\n" + "\n".join(
        uncovered
    )


@pytest.mark.parametrize("cmd", list(UNIQUE.values()), ids=lambda c: c.where)
def test_documented_command_parses(cmd: DocCommand, capsys: pytest.CaptureFixture[str]) -> None:
    from hardenkit.cli import build_parser

    wants_help = any(a in {"-h", "--help"} for a in cmd.argv)
    try:
        build_parser().parse_args(cmd.argv)
    except SystemExit as exc:
        if wants_help and not exc.code:
            return
        err = capsys.readouterr().err.strip()
        pytest.fail(f"{cmd.where}: `{cmd.command}` does not parse (exit {exc.code}): {err}")
    assert not wants_help, f"{cmd.where}: --help did not exit"


# --- running the cheap ones -------------------------------------------------------------------


def _option(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            return argv[i + 1]
        for n in names:
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _set_option(argv: list[str], name: str, value: str) -> None:
    i = argv.index(name)
    argv[i + 1] = value


def _synthetic_classes(spec: str) -> int | None:
    m = re.search(r"num_classes=(\d+)", spec)
    return int(m.group(1)) if m else None


def _write_images(
    root: Path, classes: int, per_class: int = IMAGES_PER_CLASS, seed: int = 0
) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{j}.png")


def _write_archive(path: Path, split: str, classes: int, tmp: Path) -> None:
    staging = tmp / "_archive" / split
    _write_images(staging, classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging, arcname=split)


def _stand_in_model(arch: str, num_classes: int, arch_args: str, path: Path) -> None:
    """A model that always predicts class 0: a planted backdoor's worst case (ASR 100 %)."""
    import torch

    from hardenkit.cli._common import parse_kv
    from hardenkit.io import model_metadata, save_state_dict
    from hardenkit.models import build_model

    kwargs = parse_kv(arch_args, "--arch-args")
    model = build_model(arch, num_classes, **kwargs)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[0] = 10.0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, path, metadata=model_metadata(arch, num_classes, kwargs))


def _user_package(root: Path) -> None:
    """``my_project.models:build_net`` of docs/models.md."""
    pkg = root / "my_project"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "from torch import nn\n\n\n"
        "def build_net(num_classes=10, width=16):\n"
        "    return nn.Sequential(\n"
        "        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "        nn.Flatten(), nn.Linear(width, num_classes)\n"
        "    )\n"
    )


def _policy_from_docs() -> str:
    """The ``# policy.yaml`` example of docs/cli.md."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    m = re.search(r"```yaml\n(# policy\.yaml\n.*?)```", text, re.S)
    assert m, "docs/cli.md lost its policy.yaml example"
    return m.group(1)


def _gate_policy_from_docs() -> str:
    """The ``# gate-policy.yaml`` example of docs/gate.md."""
    text = (ROOT / "docs" / "gate.md").read_text(encoding="utf-8")
    m = re.search(r"```yaml\n(# gate-policy\.yaml\n.*?)```", text, re.S)
    assert m, "docs/gate.md lost its gate-policy.yaml example"
    return m.group(1)


def _fleet_manifest_from_docs() -> str:
    """The ``# fleet.yaml`` example of docs/scale.md."""
    text = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    m = re.search(r"```yaml\n(# fleet\.yaml\n.*?)```", text, re.S)
    assert m, "docs/scale.md lost its fleet.yaml example"
    return m.group(1)


def _prepare_fleet(argv: list[str], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``scan-fleet MANIFEST``: the manifest of docs/scale.md, its weights (always-class-0
    stand-ins) and clean images. The spawned workers scan with the parent's (shrunk) budgets:
    the fleet resolves every ScanConfig before sending the tasks."""
    import yaml

    text = _fleet_manifest_from_docs()
    manifest = tmp / argv[1]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(text)
    doc = yaml.safe_load(text)
    defaults = doc.get("defaults") or {}
    data = defaults.get("data")
    for entry in doc["models"]:
        arch = entry.get("arch") or entry.get("factory") or "small-cnn"
        if ":" in arch:
            _user_package(tmp)
            monkeypatch.syspath_prepend(str(tmp))  # the spawned workers get this sys.path
            for name in [m for m in sys.modules if m.split(".")[0] == "my_project"]:
                monkeypatch.delitem(sys.modules, name)
        arch_args = ",".join(f"{k}={v}" for k, v in (entry.get("arch_args") or {}).items())
        _stand_in_model(
            arch, int(entry.get("num_classes", 10)), arch_args, manifest.parent / entry["weights"]
        )
        spec = entry.get("data", data)
        if spec and not spec.startswith("synthetic") and not (manifest.parent / spec).exists():
            _write_images(manifest.parent / spec, int(entry.get("num_classes", 10)))


def _backdoored_stand_in(model: Any, path: Path) -> None:
    """The session's BadNets SmallCNN (10 classes, target 0): what the docs' scans should flag."""
    from hardenkit.io import model_metadata, save_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, path, metadata=model_metadata("small-cnn", 10, {}))


def prepare(
    cmd: DocCommand,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    backdoored: Callable[[], Any] | None = None,
) -> list[str]:
    """Create the files ``cmd`` names under ``tmp``; return the argv to run (shrunk).

    ``backdoored()`` returns a real backdoored SmallCNN (10 classes); it stands in for the
    ``--weights`` of a scan or repair of such a model, so "exit 1: backdoor flagged" is tested
    on a backdoor. Other models are an always-class-0 stand-in.
    """
    argv = cmd.argv
    # absolute /tmp/... paths of the examples go below tmp
    argv = [str(tmp / a[len("/tmp/") :]) if a.startswith("/tmp/") else a for a in argv]
    if argv and argv[0] == "scan-fleet":
        _prepare_fleet(argv, tmp, monkeypatch)
        _shrink_budgets(monkeypatch)
        return argv
    arch = _option(argv, "--arch")
    if arch in HEAVY_ARCHS:
        _set_option(argv, "--arch", "small-cnn")
        arch = "small-cnn"
    data = _option(argv, "--data")
    classes = int(_option(argv, "--num-classes") or 0) or None
    if data is not None and data.startswith("synthetic"):
        classes = classes or _synthetic_classes(data) or 10
        _set_option(argv, "--data", f"synthetic:num_classes={classes},{TINY}")
    classes = classes or 10
    if data is not None and not data.startswith("synthetic"):
        split = _option(argv, "--split") or ("train" if "scan" in argv[:3] else "test")
        if data.endswith((".tar.gz", ".tgz")):
            _write_archive(tmp / data, split, classes, tmp)
        else:
            _write_images(tmp / data, classes)
    holdout = _option(argv, "--holdout")  # hardenkit gate's held-out images: other pixels
    if holdout is not None and not holdout.startswith("synthetic"):
        _write_images(tmp / holdout, classes, seed=1)
    test_data = _option(argv, "--test-data")  # hardenkit train's clean held-out images
    if test_data is not None and not test_data.startswith("synthetic"):
        _write_images(tmp / test_data, classes)
    poison_file = _option(argv, "--poison-indices")
    if poison_file is not None:
        (tmp / poison_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp / poison_file).write_text("[0, 1, 2]")
    if arch is not None and ":" in arch:
        _user_package(tmp)
        monkeypatch.syspath_prepend(str(tmp))
        for name in [m for m in sys.modules if m == "my_project" or m.startswith("my_project.")]:
            monkeypatch.delitem(sys.modules, name)
    weights = _option(argv, "--weights")
    scans = bool(argv) and argv[0] in {"scan", "purify", "gate"}
    plain = (arch or "small-cnn") == "small-cnn" and classes == 10
    if weights is not None and scans and plain and backdoored is not None:
        _backdoored_stand_in(backdoored(), tmp / weights)
    elif weights is not None:
        _stand_in_model(
            arch or "small-cnn", classes, _option(argv, "--arch-args") or "", tmp / weights
        )
    trigger = _option(argv, "--trigger")
    if trigger is not None and trigger.endswith(".safetensors"):
        from hardenkit.attacks import build_attack

        (tmp / trigger).parent.mkdir(parents=True, exist_ok=True)
        build_attack("badnets", {"image_size": 32, "channels": 3}).trigger.save(tmp / trigger)
    policy = _option(argv, "--policy")
    if policy is not None:
        (tmp / policy).parent.mkdir(parents=True, exist_ok=True)
        gate = bool(argv) and argv[0] == "gate"
        (tmp / policy).write_text(_gate_policy_from_docs() if gate else _policy_from_docs())
    _shrink_budgets(monkeypatch)
    scan_dir = _option(argv, "--scan")
    if scan_dir is not None and not (tmp / scan_dir).exists():
        _scan_first(argv, tmp / scan_dir)
    if argv and argv[0] == "demo" and "--out" not in argv:
        argv += ["--out", str(tmp / "hardenkit-demo")]
    return argv


def _shrink_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny scans and a tiny demo data set; the commands and their flags stay as documented."""
    import hardenkit.data
    from hardenkit.cli import demo
    from hardenkit.scan import budget

    for name in budget.SCAN_BUDGETS:
        monkeypatch.setitem(budget.SCAN_BUDGETS, name, dict(TINY_SCAN))
    # the demo's scan is Neural Cleanse alone: only that detector's options (others are an error)
    nc_only = {k: v for k, v in TINY_SCAN.items() if k != "detector_options"}
    nc_only["detector_options"] = {
        "neural-cleanse": TINY_SCAN["detector_options"]["neural-cleanse"]
    }  # type: ignore[index]
    monkeypatch.setattr(demo, "DEMO_SCAN", nc_only)
    real = hardenkit.data.make_synthetic_dataset

    def tiny_synthetic(*args: object, **kwargs: object) -> object:
        return real(*args, **{**kwargs, **TINY_DEMO})  # type: ignore[arg-type]

    monkeypatch.setattr(hardenkit.data, "make_synthetic_dataset", tiny_synthetic)

    import hardenkit.purify
    from hardenkit.purify import purifier

    class TinyPurifier(purifier.Purifier):
        def __init__(self, model: Any, strategy: Any = "auto", **kwargs: Any) -> None:
            if isinstance(strategy, str) and strategy in TINY_REPAIR:
                given = kwargs.get("config") or {}
                if isinstance(given, dict):
                    kwargs["config"] = {**TINY_REPAIR[strategy], **given}
            super().__init__(model, strategy, **kwargs)

    monkeypatch.setattr(hardenkit.purify, "Purifier", TinyPurifier)


def _scan_first(argv: list[str], out: Path) -> None:
    """``purify --scan DIR`` follows a documented ``scan --out DIR``: run that scan."""
    from hardenkit.cli import main

    scan = ["scan", "--out", str(out)]
    for flag in ("--weights", "--arch", "--num-classes", "--data", "--arch-args"):
        value = _option(argv, flag)
        if value is not None:
            scan += [flag, value]
    rc = main(scan)
    assert rc in {0, 1}, f"the scan behind --scan exited {rc}: {scan}"
    assert out.is_dir(), f"the scan behind --scan wrote no {out}"


def _without_out(cmd: DocCommand) -> str:
    """The command without its output directory: the same run whatever the folder's name."""
    argv = cmd.argv
    for flag in ("--out", "-o"):
        if flag in argv:
            i = argv.index(flag)
            argv = argv[:i] + argv[i + 2 :]
    return " ".join(argv)


_RUN_ONCE: dict[str, DocCommand] = {}
for _c in UNIQUE.values():
    if is_run(_c):
        _RUN_ONCE.setdefault(_without_out(_c), _c)
RUNNABLE = list(_RUN_ONCE.values())
"""Run once per distinct command (``demo --out A`` and ``demo --out B`` are one run)."""


@pytest.mark.parametrize("cmd", RUNNABLE, ids=lambda c: c.where)
def test_documented_command_runs(
    cmd: DocCommand,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    from hardenkit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = prepare(
        cmd, tmp_path, monkeypatch, lambda: request.getfixturevalue("badnets_model").model
    )
    rc = main(argv)
    out, err = capsys.readouterr()
    context = f"{cmd.where}: `{cmd.command}` (ran as {argv}) exited {rc}\n{err[-2000:]}"
    if "--require" in argv and "CUDAExecutionProvider" in argv:
        import torch

        # "CI: exit 3 if CUDA does not run": 3 on a host without CUDA, 0 or 3 with one
        # (the CUDA provider of ONNX Runtime may still fail to load there)
        assert rc in ({0, 3} if torch.cuda.is_available() else {3}), context
        return
    if cmd.exit_codes:
        assert rc in cmd.exit_codes, context
    else:  # a documented example with its files present is no usage or runtime error
        assert rc in {0, 1}, context
    assert rc not in {2, 3, 70}, context
    if cmd.key == "hardenkit --version" and cmd.comment.startswith("hardenkit "):
        assert out.strip() == cmd.comment, f"{cmd.where}: --version prints {out.strip()!r}"


def test_run_and_parsed_only_counts() -> None:
    run = [c for c in UNIQUE.values() if is_run(c)]
    parsed = [c for c in UNIQUE.values() if not is_run(c)]
    assert len(run) + len(parsed) == len(UNIQUE)
    assert run, "no documented command is run"
    assert all(parsed_only_reason(c) for c in parsed)


# --- documented output --------------------------------------------------------------------


def _output_blocks() -> list[tuple[str, str, str]]:
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in OUTPUT_FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{_rel(path)}:{line}", m.group(1), m.group(2)))
    return found


@pytest.mark.parametrize(
    ("where", "command", "shown"),
    [
        pytest.param(*b, id=b[0])
        for b in _output_blocks()
        if b[1] in {"hardenkit models", "hardenkit strategies"}
    ],
)
def test_documented_output_is_real(
    where: str, command: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hardenkit.cli import main

    assert main(shlex.split(command)[1:]) == 0
    real = capsys.readouterr().out
    assert shown.strip() == real.strip(), f"{where}: the output of `{command}` changed:\n{real}"


def test_extractor_handles_continuations_and_comments(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "```bash\n"
        "hardenkit scan --weights m.safetensors \\\n"
        "    --data d/ --out s/   # exit 1: flagged\n"
        "hardenkit validate --weights m.safetensors --data 'a #b'\n"
        "echo $?     # 0 passed, 1 failed,\n"
        "            # 2 usage error\n"
        "python -m something\n"
        "```\n"
        "```python\nhardenkit models\n```\n"
    )
    cmds = extract_commands([doc])
    assert [c.command for c in cmds] == [
        "hardenkit scan --weights m.safetensors --data d/ --out s/",
        "hardenkit validate --weights m.safetensors --data 'a #b'",
    ]
    assert cmds[0].exit_codes == {1}
    assert cmds[1].exit_codes == {0, 1, 2}
    assert cmds[1].argv[-1] == "a #b"
