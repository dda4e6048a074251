"""The GitHub Action (``integrations/github-action``) and the workflow in its README.

``action.yml`` is parsed with PyYAML and checked against the real CLI: every flag its
``hardenkit gate`` step can pass exists, and the step's bash script, run with a stub
``hardenkit`` that records its argv, builds a command line the real parser accepts (all
optional inputs set, and only the required ones). The step outputs (``passed``,
``exit-code``, ``report-id``) come from a real ``gate.json``; the code-scanning SARIF step
(the alerts located at the weights file) and the last step (fail with the gate's exit
code) run too. Every ``${{ inputs.X }}`` is declared and every declared input is used; no
``run:`` script splices an expression into shell code. The README's workflow parses, uses
this action with declared inputs only and grants ``security-events: write``; its policy
block is a valid ``DeploymentPolicy``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hardenkit.cli import build_parser
from hardenkit.gate import DeploymentPolicy, sarif_log
from tests.unit.test_gate import _report

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
ACTION_DIR = ROOT / "integrations" / "github-action"
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)
INPUT_REF = re.compile(r"\binputs\.([A-Za-z0-9_-]+)")
needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or sys.platform == "win32", reason="needs bash (POSIX)"
)


def _action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ACTION_DIR / "action.yml").read_text())
    return data


def _step(step_id: str) -> dict[str, Any]:
    for step in _action()["runs"]["steps"]:
        if step.get("id") == step_id:
            out: dict[str, Any] = step
            return out
    raise AssertionError(f"action.yml has no step with id {step_id!r}")


def _gate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            gate: argparse.ArgumentParser = action.choices["gate"]
            return gate
    raise AssertionError("hardenkit has no subcommands")


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string) in a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _input_refs(node: Any) -> set[str]:
    """Inputs referenced in ``${{ }}`` expressions and in ``if:`` conditions."""
    refs: set[str] = set()
    for key, text in _strings(node):
        exprs = [text] if key == "if" else EXPR.findall(text)
        for e in exprs:
            refs.update(INPUT_REF.findall(e))
    return refs


def _env(step: dict[str, Any], inputs: dict[str, str]) -> dict[str, str]:
    """The step's ``env:`` with ``${{ inputs.X }}`` replaced by ``inputs`` (else the default)."""
    declared = _action()["inputs"]

    def value(m: re.Match[str]) -> str:
        ref = INPUT_REF.fullmatch(m.group(1).strip())
        assert ref, f"unexpected expression in env: {m.group(0)}"
        name = ref.group(1)
        return inputs.get(name, str(declared[name].get("default", "")))

    return {k: EXPR.sub(value, str(v)) for k, v in step.get("env", {}).items()}


def _run_step(
    step_id: str, inputs: dict[str, str], tmp: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """Run a step's bash script; return the process, its outputs and the job summary."""
    step = _step(step_id)
    out_file, summary = tmp / "github_output", tmp / "step_summary"
    out_file.write_text("")
    summary.write_text("")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GITHUB_OUTPUT": str(out_file),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_WORKSPACE": str(tmp),
        "RUNNER_TEMP": str(tmp / "runner_temp"),
        **_env(step, inputs),
        **(extra_env or {}),
    }
    (tmp / "runner_temp").mkdir(exist_ok=True)
    proc = subprocess.run(
        ["bash", "-c", step["run"]], cwd=tmp, env=env, capture_output=True, text=True, timeout=120
    )
    outputs = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line)
    return proc, outputs, summary.read_text()


STUB = """\
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
Path(os.environ["HK_STUB_ARGS"]).write_text(json.dumps(argv))
out = Path(argv[argv.index("--out") + 1])
report = os.environ.get("HK_STUB_REPORT")
if report:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(Path(report).read_text())
    (out / "gate.sarif").write_text("{}")
sys.exit(int(os.environ["HK_STUB_CODE"]))
"""


def _stub_cli(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "hardenkit"
    stub.write_text(f"#!{sys.executable}\n{STUB}")
    stub.chmod(0o755)
    return bin_dir


ALL_INPUTS = {
    "weights": "models/candidate.safetensors",
    "data": "data/clean.tar.gz",
    "arch": "small-cnn",
    "num-classes": "4",
    "arch-args": "width=8",
    "split": "train",
    "holdout": "data/holdout.tar.gz",
    "holdout-split": "test",
    "image-size": "32 32",
    "policy": "gate-policy.yaml",
    "device": "cpu",
    "seed": "3",
    "out": "gate-out",
}


# ------------------------------------------------------------------------------ action.yml


def test_action_is_a_composite_action_for_the_gate() -> None:
    action = _action()
    assert action["runs"]["using"] == "composite"
    assert {"passed", "exit-code", "report-id"} <= set(action["outputs"])
    for name, out in action["outputs"].items():
        assert out["value"] == f"${{{{ steps.gate.outputs.{name} }}}}"
    uses = {s.get("uses", "").split("@")[0] for s in action["runs"]["steps"]}
    assert {"actions/upload-artifact", "github/codeql-action/upload-sarif"} <= uses
    assert "hardenkit gate" in action["name"]
    assert 'hardenkit "${args[@]}"' in _step("gate")["run"]
    assert _step("gate")["run"].lstrip().count("args=(gate ") == 1


def test_every_input_reference_is_declared_and_every_input_used() -> None:
    action = _action()
    declared = set(action["inputs"])
    refs = _input_refs(action["runs"]) | _input_refs(action["outputs"])
    assert refs - declared == set(), "referenced but not declared"
    assert declared - refs == set(), "declared but never used"


def test_run_scripts_take_inputs_through_env_only() -> None:
    for step in _action()["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], f"expression spliced into shell: {step.get('name')}"
            assert step["shell"] == "bash"


def test_every_gate_flag_in_action_yml_exists() -> None:
    script = _step("gate")["run"]
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", script))
    known = {s for a in _gate_parser()._actions for s in a.option_strings}
    assert used, "no flag found: the regex or the step changed"
    assert used - known == set()
    required = {a.option_strings[0] for a in _gate_parser()._actions if a.required}
    assert required <= used


@needs_bash
@pytest.mark.parametrize(
    ("inputs", "spec"),
    [
        ({}, f"hardenkit[cli] @ file://{ROOT}"),
        ({"extras": ""}, f"hardenkit @ file://{ROOT}"),
        (
            {"hardenkit-ref": "v9", "hardenkit-repository": "me/hk", "extras": "cli,fp16"},
            "hardenkit[cli,fp16] @ git+https://github.com/me/hk@v9",
        ),
        ({"hardenkit-spec": "hardenkit.whl", "torch-spec": ""}, "hardenkit.whl"),
    ],
)
def test_install_step_installs_torch_then_this_checkout(
    tmp_path: Path, inputs: dict[str, str], spec: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "pip_calls.jsonl"
    stub = bin_dir / "python"  # records `python -m pip install ...`
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    step = next(
        s for s in _action()["runs"]["steps"] if s.get("name") == "Install torch and hardenkit"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "GITHUB_ACTION_PATH": str(ACTION_DIR),
        **_env(step, {"hardenkit-repository": "", **inputs}),
    }
    proc = subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    torch = (
        []
        if inputs.get("torch-spec") == ""
        else [
            ["-m", "pip", "install", "torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
        ]
    )
    assert argvs == [*torch, ["-m", "pip", "install", spec]]


@needs_bash
def test_install_step_refuses_a_ref_without_a_repository(tmp_path: Path) -> None:
    step = next(
        s for s in _action()["runs"]["steps"] if s.get("name") == "Install torch and hardenkit"
    )
    env = {
        **os.environ,
        "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}",
        **_env(step, {"hardenkit-ref": "v9", "hardenkit-repository": "", "torch-spec": ""}),
    }
    proc = subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "hardenkit-ref is set but hardenkit-repository is empty" in proc.stderr


@needs_bash
@pytest.mark.parametrize("inputs", [ALL_INPUTS, {k: ALL_INPUTS[k] for k in ("weights", "data")}])
def test_gate_step_builds_a_command_the_real_parser_accepts(
    tmp_path: Path, inputs: dict[str, str]
) -> None:
    bin_dir = _stub_cli(tmp_path)
    rep = _report({"HK-DATA-001": "pass", "HK-ASR-001": "fail"})
    report_file = rep.save(tmp_path / "report.json")
    args_file = tmp_path / "argv.json"
    proc, outputs, summary = _run_step(
        "gate",
        inputs,
        tmp_path,
        {
            "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
            f"{os.environ.get('PATH', '')}",
            "HK_STUB_ARGS": str(args_file),
            "HK_STUB_REPORT": str(report_file),
            "HK_STUB_CODE": "1",
        },
    )
    assert proc.returncode == 0, proc.stderr  # the job fails in the last step
    argv = json.loads(args_file.read_text())
    assert argv[0] == "gate"
    ns = build_parser().parse_args(argv)  # a bad flag or arity exits 2 here
    out = inputs.get("out", _action()["inputs"]["out"]["default"])
    assert (str(ns.weights), ns.data, str(ns.out)) == (inputs["weights"], inputs["data"], out)
    if "image-size" in inputs:
        assert ns.image_size == [32, 32]
        assert (ns.arch, ns.num_classes, ns.seed, ns.device) == ("small-cnn", 4, 3, "cpu")
        assert (ns.holdout, str(ns.policy)) == (inputs["holdout"], inputs["policy"])
    else:
        assert ns.image_size is None
        assert ns.holdout is None
        assert ns.policy is None
    assert outputs == {"exit-code": "1", "passed": "false", "report-id": rep.report_id}
    assert "ERROR" not in summary


@needs_bash
def test_gate_step_without_a_report_outputs_the_error(tmp_path: Path) -> None:
    bin_dir = _stub_cli(tmp_path)
    stale = tmp_path / "hardenkit-gate"
    stale.mkdir()
    _report({"HK-DATA-001": "pass"}).save(stale / "gate.json")  # from an earlier run
    proc, outputs, summary = _run_step(
        "gate",
        {"weights": "w.safetensors", "data": "d.tar.gz"},
        tmp_path,
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HK_STUB_ARGS": str(tmp_path / "argv.json"),
            "HK_STUB_CODE": "2",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs == {"exit-code": "2", "passed": "false", "report-id": ""}
    assert "hardenkit gate: ERROR (exit 2)" in summary
    assert not (stale / "gate.json").exists()


@needs_bash
@pytest.mark.parametrize("inside", [True, False])
def test_sarif_step_locates_alerts_in_the_repository(tmp_path: Path, inside: bool) -> None:
    out = tmp_path / "gate-out"
    out.mkdir()
    rep = _report({"HK-DATA-001": "pass", "HK-ASR-001": "fail", "HK-BA-002": "fail"})
    gate_sarif = sarif_log(rep)
    (out / "gate.sarif").write_text(gate_sarif)
    weights = "models/candidate.safetensors" if inside else str(tmp_path.parent / "w.safetensors")
    proc, outputs, _ = _run_step(
        "sarif", {"weights": weights, "out": "gate-out", "upload-sarif": "true"}, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "gate.sarif").read_text() == gate_sarif  # gate.json records its sha256
    log = json.loads(Path(outputs["file"]).read_text())
    want = "models/candidate.safetensors" if inside else "gate-out/model.safetensors"
    assert log == json.loads(sarif_log(rep, artifact_uri=want))


@needs_bash
@pytest.mark.parametrize("code", ["0", "1", "3"])
def test_last_step_fails_the_job_with_the_gate_exit_code(tmp_path: Path, code: str) -> None:
    last = _action()["runs"]["steps"][-1]
    assert last["env"]["HK_CODE"] == "${{ steps.gate.outputs.exit-code }}"
    env = {**os.environ, "HK_CODE": code, "HK_OUT": "hardenkit-gate"}
    proc = subprocess.run(["bash", "-c", last["run"]], env=env, capture_output=True, text=True)
    assert proc.returncode == int(code)


# ------------------------------------------------------------------------------ README


def _readme_yaml_blocks(path: Path = ACTION_DIR / "README.md") -> list[Any]:
    text = path.read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_readme_workflow_uses_this_action_with_declared_inputs() -> None:
    action = _action()
    workflows = [b for b in _readme_yaml_blocks() if isinstance(b, dict) and "jobs" in b]
    assert len(workflows) == 1
    wf = workflows[0]
    assert wf.get("on", wf.get(True)), "no trigger"  # PyYAML reads `on:` as True
    assert wf["permissions"]["security-events"] == "write"
    assert wf["permissions"]["contents"] == "read"
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    ours = [s for s in steps if "/integrations/github-action@" in s.get("uses", "")]
    assert len(ours) == 1
    with_ = ours[0]["with"]
    assert set(with_) - set(action["inputs"]) == set(), "undeclared inputs"
    required = {k for k, v in action["inputs"].items() if v.get("required")}
    assert required <= set(with_)
    assert steps.index(ours[0]) > 0
    assert steps[0]["uses"].startswith("actions/checkout@")
    used_outputs = set()
    for _, text in _strings(steps):
        used_outputs.update(re.findall(rf"steps\.{ours[0]['id']}\.outputs\.([\w-]+)", text))
    assert used_outputs
    assert used_outputs <= set(action["outputs"])


def test_readme_policy_block_is_a_valid_policy() -> None:
    policies = [b for b in _readme_yaml_blocks() if isinstance(b, dict) and "max_asr" in b]
    assert len(policies) == 1
    assert DeploymentPolicy(**policies[0]).onnx_provider == "cpu"


def test_integrations_readme_snippet_uses_declared_inputs() -> None:
    action = _action()
    blocks = _readme_yaml_blocks(ROOT / "integrations" / "README.md")
    steps = [s for b in blocks for s in (b if isinstance(b, list) else [])]
    ours = [s for s in steps if "/integrations/github-action@" in s.get("uses", "")]
    assert ours, "integrations/README.md shows no step using the action"
    for step in ours:
        assert set(step["with"]) - set(action["inputs"]) == set()
