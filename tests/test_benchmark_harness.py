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


def test_the_cvae_table_has_a_section_a_corpus_and_keeps_each_corpus_measures(tmp_path):
    import cvae_report
    import sacrebleu

    made = {"command": "benchmarks/cvae.py", "started": "2026-12-06 20:00", "machine": "m"}
    sources = ["a man rides a red bike .", "two dogs play in the snow ."]
    references = [
        ["a man is riding a bike .", "a person on a red bicycle ."],
        ["dogs are playing in snow .", "two dogs run in the snow ."],
    ]
    outputs = [["a man is riding a red bike .", "a man rides ."], ["dogs play in snow .", "x"]]
    multi30k = cvae_report.text_row(
        "multi30k", "bart_cvae", "prior-greedy", "recipe", sources, outputs, references
    )
    # multi-reference BLEU: each source's first output against all its references (sacrebleu)
    firsts = [o[0] for o in outputs]
    streams = [list(r) for r in zip(*references)]
    expected = sacrebleu.corpus_bleu(firsts, streams, tokenize="none").score
    assert multi30k["multi_ref_bleu"] == expected > 0
    words = [w for o in outputs for sentence in o for w in sentence.split()]
    assert multi30k["distinct_1"] == len(set(words)) / len(words)  # corpus-level, all outputs
    yelp = {**multi30k, "corpus": "yelp", "multi_ref_bleu": None, "precision_bleu": None,
            "recall_bleu": None, "source_bleu": None, "judge_accuracy": 0.97, "lm_ppl": 60.0,
            "lm_ppl_ratio": 1.1, "copies": 0.02, "ppl_word": 70.0}  # fmt: skip
    transfer = [{"corpus": "yelp", "method": "swap-condition", "accuracy": 0.91,
                 "source_bleu": 12.5, "lm_ppl_ratio": 1.2, "made": made}]  # fmt: skip
    vae = {"iw_ppl_word": 65.4, "transfer": [
        {"method": "mean", "strength": 2.0, "accuracy": 0.93, "source_bleu": 2.6,
         "lm_ppl_ratio": 0.9}]}  # fmt: skip
    data = {
        "rows": [dict(multi30k, made=made), dict(yelp, made=made)],
        "cost": None,
        "settings": {
            "yelp": {
                "description": "Yelp's test split",
                "compared": {"vae": vae, "lm": {"ppl": 56.1}},
            }
        },  # fmt: skip
        "transfer": transfer,
    }
    results = str(tmp_path / "cvae.md")
    cvae_report.write_results(results, data)
    text = open(results).read()
    assert "## Paraphrases of Multi30k captions" in text and "## Yelp sentences" in text
    assert "| bart_cvae | swap-condition | | 0.910 | 12.5 | 1.20 |" in text
    assert "| bart_vae | mean | 2.0 | 0.930 | 2.6 | 0.90 |" in text
    assert "IW-PPL of p(x|label) 70.00, the unconditional VAE's IW-PPL 65.40" in text
    assert os.path.isfile(tmp_path / "cvae.png")
    saved = json.load(open(tmp_path / "cvae.json"))
    assert [r["corpus"] for r in saved["rows"]] == ["multi30k", "yelp"]
    assert saved["transfer"][0]["accuracy"] == 0.91


def test_a_setting_with_smaller_batches_trains_on_the_same_tokens():
    b = dict(harness.BUDGETS["cpu"])
    cmd = harness.vae_train_cmds(
        "data", b, harness.SETTINGS["BART init, fb 0.5, 1024 tokens"], 1600, "out", "bart.pt"
    )[0]
    tokens, updates = (
        int(cmd[cmd.index("--max-tokens") + 1]),
        int(cmd[cmd.index("--max-update") + 1]),
    )
    assert tokens == 1024 and tokens * updates == b["max_tokens"] * 1600
    # the schedule is set in fractions of the run, so its four cycles follow the longer run
    assert cmd[cmd.index("--kl-cycles") + 1] == "4"
    plain = harness.vae_train_cmds(
        "data", b, harness.SETTINGS["BART init, fb 0.5"], 1600, "out", "bart.pt"
    )[0]
    assert plain[plain.index("--max-tokens") + 1] == "4096" and b["max_tokens"] == 4096


def test_a_run_records_its_command_without_this_machine_s_folders(monkeypatch):
    data = os.path.join(os.path.dirname(ROOT), "shared", "data", "yelp")
    out = os.path.join(ROOT, "benchmarks", "runs", "x")
    monkeypatch.setattr(sys, "argv", ["control.py", "--yelp", data, "--out", out, "--slots", "1"])
    monkeypatch.setattr(harness, "machine", lambda: "m")
    made = harness.made_by("benchmarks/control.py")
    assert made["command"] == (
        "benchmarks/control.py --yelp ../shared/data/yelp --out benchmarks/runs/x --slots 1"
    )


def test_recon_keeps_the_published_points_of_runs_not_on_this_machine(tmp_path):
    import recon

    out = tmp_path / "recon"
    run = out / "runs" / "gru-fb0.5-scratch"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"candidate": "GRU yardstick", "kl": "fb0.5",
                                              "init": "scratch", "made": {}}))  # fmt: skip
    point = {"mark": 5, "minutes": 5.0, "updates": 700, "bleu": 9.0, "exact": 0.01, "kl_nats": 16}
    (run / "point-5min.json").write_text(json.dumps(point))
    here = harness.rel(str(run))
    published = [
        {"candidate": "baseline", "run": "benchmarks/runs/recon-cpu/runs/gone", "mark": 5},
        {"candidate": "GRU yardstick", "run": here, "mark": 10},  # an older result of this run
    ]
    points = recon.collect(str(out), published)
    assert [(p["candidate"], p["run"], p["mark"]) for p in points] == [
        ("baseline", "benchmarks/runs/recon-cpu/runs/gone", 5),
        ("GRU yardstick", here, 5),
    ]
    assert points[1]["bleu"] == 9.0 and points[1]["kl_nats"] == 16


def test_the_gru_yardsticks_loss_is_nll_plus_free_bits_kl_by_hand():
    import recon_gru
    import torch
    import torch.nn.functional as F
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    model = recon_gru.GRUVAE(vocab=20, embed=8, hidden=8, latent=4)
    batch = recon_gru.batch_of([["a", "b", "c"], ["b"]], {"a": 4, "b": 5, "c": 6})
    enc, lengths, dec_in, dec_out = batch
    assert dec_in.tolist() == [[1, 4, 5, 6], [1, 5, 0, 0]]
    assert dec_out.tolist() == [[4, 5, 6, 2], [5, 2, 0, 0]]
    mean_pooled = recon_gru.GRUVAE(vocab=20, embed=8, hidden=8, latent=4, pooling="mean")
    mean_pooled.load_state_dict(model.state_dict())
    states, _ = mean_pooled.encoder(mean_pooled.embed(enc[:1]))  # the 3-word sentence alone
    expected = mean_pooled.to_mu(states[0].mean(0))
    assert torch.allclose(mean_pooled.encode(enc, lengths)[0][0], expected, atol=1e-6)
    short, _ = mean_pooled.encoder(mean_pooled.embed(enc[1:2, :1]))  # padding left out
    assert torch.allclose(mean_pooled.encode(enc, lengths)[0][1], mean_pooled.to_mu(short[0, 0]),
                          atol=1e-6)  # fmt: skip
    for kl in ("ae", "fb0.5"):
        torch.manual_seed(1)
        loss = recon_gru.loss_of(model, batch, kl)
        torch.manual_seed(1)
        mu, logvar = model.encode(enc, lengths)
        alone = model.encode(enc[1:2, :1], lengths[1:2])  # the padding does not reach q
        assert torch.allclose(alone[0], mu[1:2], atol=1e-6)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        nll = 0.0
        for i, n in enumerate(lengths.tolist()):  # one sentence at a time, its own length
            logits, _ = model.decode_step(dec_in[i : i + 1, : n + 1], z[i : i + 1],
                                          model.initial_state(z[i : i + 1]))  # fmt: skip
            nll += F.cross_entropy(logits[0], dec_out[i, : n + 1], reduction="sum")
        q = Normal(mu, (0.5 * logvar).exp())
        per_dim = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(0)
        penalty = per_dim.clamp(min=0.5 * 2).sum() if kl == "fb0.5" else 0.0
        assert torch.allclose(loss, (nll + penalty) / 2, atol=1e-5)


def recon_scheduler(candidate: str):
    """fairseq's learning-rate scheduler as a recon.py run of the candidate builds it."""
    import recon
    import torch
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim import build_optimizer
    from fairseq.optim.lr_scheduler import build_lr_scheduler

    cmd = recon.train_cmd("data", candidate, "fb0.5", None, "out", 5.0)
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, cmd[1:]))
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_lr_scheduler(cfg.lr_scheduler, optimizer)
    scheduler.step_begin_epoch(1)
    return scheduler


def test_recons_constant_lr_candidate_reaches_fairseqs_scheduler():
    """'lr constant' swaps inverse_sqrt for fairseq's fixed schedule: after the warm-up the
    learning rate stays at --lr, where inverse_sqrt is lr * sqrt(warmup / updates)."""
    b = harness.BUDGETS["cpu"]
    assert abs(recon_scheduler("lr constant").step_update(13000) - b["lr"]) < 1e-12
    warming = recon_scheduler("lr constant").step_update(100)
    assert abs(warming - b["lr"] * 101 / b["warmup"]) < 1e-12
    decayed = b["lr"] * (b["warmup"] / 13000) ** 0.5
    assert abs(recon_scheduler("baseline").step_update(13000) - decayed) < 1e-12


def test_the_gru_yardsticks_inverse_sqrt_is_the_bart_runs():
    """recon_gru's --lr-schedule inverse_sqrt gives each update the learning rate fairseq's
    scheduler gives recon.py's bart_vae runs."""
    import recon_gru

    scheduler = recon_scheduler("baseline")
    for updates in (0, 1, 150, 199, 200, 201, 3000, 13000):
        expected = scheduler.step_update(updates)
        assert abs(recon_gru.inverse_sqrt_lr(updates, 1e-3, 200) - expected) < 1e-15
