"""The benchmark harness's pure parts: results JSON with its examples apart, and the Yelp
operating point chosen on valid and reported on test."""

import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import control_report  # noqa: E402
import harness  # noqa: E402


def test_examples_go_to_a_file_of_their_own_and_come_back(tmp_path):
    data = {
        "rows": [{"a": 1, "samples": {"n": 2, "examples": ["x", "y"]}}, {"a": 2}],
        "measurements": [{"transfer": [{"b": 3, "examples": [["s", "t"]]}]}],
    }
    stem = str(tmp_path / "table")
    harness.write_results_json(stem, json.loads(json.dumps(data)))
    numbers = json.load(open(stem + ".json"))
    assert "examples" not in json.dumps(numbers)
    assert numbers["rows"][0]["samples"] == {"n": 2} and numbers["measurements"][0]["transfer"]
    assert json.load(open(stem + "-examples.json")) == {
        "rows/0/samples": ["x", "y"],
        "measurements/0/transfer/0": [["s", "t"]],
    }
    assert harness.read_results_json(stem) == data


def row(method, strength, accuracy, bleu):
    return {"method": method, "strength": strength, "accuracy": accuracy, "source_bleu": bleu,
            "lm_ppl_ratio": 1.0, "g_score": (accuracy * bleu) ** 0.5}  # fmt: skip


def test_the_yelp_operating_point_is_chosen_on_valid_and_reported_on_test():
    test = [row("mean", 2.0, 0.95, 40.0), row("linear", 1.0, 0.5, 10.0)]
    valid = [row("mean", 2.0, 0.6, 5.0), row("linear", 1.0, 0.92, 31.0)]
    best, split = control_report.best_yelp({"transfer": test, "transfer_valid": valid})
    assert (best, split) == (test[1], "valid")  # test's own best would have been mean 2.0
    best, split = control_report.best_yelp({"transfer": test})  # measured before valid rows
    assert (best, split) == (test[0], "test")
