"""The gate's CI outputs read by real consumers: SARIF against the official schema, JUnit XML
through a JUnit reader.

The SARIF 2.1.0 schema is the OASIS one (Errata 01, draft-04), vendored unmodified as
``tests/data/sarif-schema-2.1.0.json`` from https://github.com/oasis-tcs/sarif-spec
(``sarif-2.1/schema/sarif-schema-2.1.0.json``); source, commit, sha256 and the OASIS
copyright notice are in ``tests/data/README.md``. Format checks are off (the schema's
``format: uri`` etc. are not what we test). The JSON round trip of ``gate.json`` is
``tests/unit/test_gate.py::test_markdown_summary_and_round_trip``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hardenkit.gate import GateReport, junit_xml, sarif_log
from hardenkit.reports import ModelFingerprint
from tests.unit.test_gate import _report

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json"

FAILED = {"HK-DATA-001": "pass", "HK-ASR-001": "fail", "HK-BA-002": "fail", "HK-ONNX-001": "pass"}
PASSED = {"HK-DATA-001": "pass", "HK-SCAN-001": "pass", "HK-ASR-001": "pass"}
MIXED = {
    "HK-DATA-001": "pass",
    "HK-ASR-001": "fail",
    "HK-BA-001": "skipped",
    "HK-ONNX-001": "skipped",
}


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft4Validator  # what the schema declares
    cls.check_schema(schema)
    return cls(schema)  # no format_checker: formats are not checked


def _errors(validator: Any, log: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]


# ------------------------------------------------------------------------------ SARIF


@pytest.mark.parametrize("statuses", [FAILED, PASSED, MIXED], ids=["failed", "passed", "mixed"])
def test_sarif_validates_against_the_oasis_schema(validator: Any, statuses: dict[str, str]) -> None:
    log = json.loads(sarif_log(_report(statuses)))
    assert _errors(validator, log) == []
    failed = sorted(r for r, s in statuses.items() if s == "fail")
    assert sorted(r["ruleId"] for r in log["runs"][0]["results"]) == failed


def _broken(log: dict[str, Any], how: str) -> dict[str, Any]:
    bad = copy.deepcopy(log)
    result = bad["runs"][0]["results"][0]
    if how == "no-message":
        del result["message"]
    elif how == "bad-level":
        result["level"] = "fatal"
    elif how == "old-version":
        bad["version"] = "2.0.0"
    elif how == "no-driver-name":
        del bad["runs"][0]["tool"]["driver"]["name"]
    elif how == "unknown-property":
        bad["runs"][0]["resultz"] = []
    return bad


@pytest.mark.parametrize(
    "how", ["no-message", "bad-level", "old-version", "no-driver-name", "unknown-property"]
)
def test_a_broken_sarif_log_does_not_validate(validator: Any, how: str) -> None:
    log = json.loads(sarif_log(_report(FAILED)))
    assert _errors(validator, log) == []
    assert _errors(validator, _broken(log, how)) != []


def test_sarif_has_what_github_code_scanning_reads() -> None:
    rep = _report(FAILED)
    run = json.loads(sarif_log(rep, artifact_uri="models/candidate.safetensors"))["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for rule in rules:
        assert rule["shortDescription"]["text"]
        assert rule["fullDescription"]["text"]
        assert rule["help"]["text"]
        assert rule["id"] in rule["fullDescription"]["text"]
        assert "hardenkit-gate" in rule["properties"]["tags"]
    tags = {r["id"]: r["properties"]["tags"] for r in rules}
    assert "security" in tags["HK-ASR-001"]
    assert "security" not in tags["HK-BA-002"]
    fingerprints = set()
    for res in run["results"]:
        loc = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert loc == "models/candidate.safetensors"
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        fp = res["partialFingerprints"]["hardenkitRule/v1"]
        assert fp == f"{res['ruleId']}:{rep.input_model.sha256}"
        fingerprints.add(fp)
    assert len(fingerprints) == len(run["results"]) == 2


def test_sarif_fingerprints_follow_the_input_model() -> None:
    rep = _report(FAILED)
    again = GateReport.model_validate_json(rep.model_dump_json())

    def fps(r: GateReport) -> list[str]:
        results = json.loads(sarif_log(r))["runs"][0]["results"]
        return [res["partialFingerprints"]["hardenkitRule/v1"] for res in results]

    assert fps(again) == fps(rep)  # same candidate, same alerts
    other = ModelFingerprint(**{**rep.input_model.model_dump(), "sha256": "0" * 64})
    moved = rep.model_copy(update={"input_model": other})
    assert set(fps(moved)).isdisjoint(fps(rep))  # a new candidate gets new alerts


# ------------------------------------------------------------------------------ JUnit


@pytest.mark.parametrize("statuses", [FAILED, PASSED, MIXED], ids=["failed", "passed", "mixed"])
def test_junit_reads_back_with_a_junit_reader(tmp_path: Path, statuses: dict[str, str]) -> None:
    junitparser = pytest.importorskip("junitparser")
    rep = _report(statuses)
    path = tmp_path / "junit.xml"
    path.write_text(junit_xml(rep), encoding="utf-8")
    for xml in (
        junitparser.JUnitXml.fromfile(str(path)),
        junitparser.JUnitXml.fromstring(path.read_text()),
    ):
        suites = list(xml)
        assert len(suites) == 1
        suite = suites[0]
        assert suite.name == "hardenkit-gate"
        n_fail = sum(s == "fail" for s in statuses.values())
        n_skip = sum(s == "skipped" for s in statuses.values())
        assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (
            len(statuses),
            n_fail,
            n_skip,
            0,
        )
        assert (xml.tests, xml.failures, xml.skipped) == (len(statuses), n_fail, n_skip)
        props = {p.name: p.value for p in suite.properties()}
        assert props["report_id"] == rep.report_id
        cases = {c.name.split()[0]: c for c in suite}
        assert set(cases) == set(statuses)
        for rule_id, status in statuses.items():
            case = cases[rule_id]
            if status == "fail":
                assert case.is_failure
                (result,) = case.result
                assert isinstance(result, junitparser.Failure)
                assert result.message == f"{rule_id} is fail"
                assert result.type == "policy"
            elif status == "skipped":
                assert case.is_skipped
                (result,) = case.result
                assert isinstance(result, junitparser.Skipped)
            else:
                assert case.is_passed
                assert case.result == []
            assert case.system_out == f"{rule_id} is {status}"
