"""Reliability: exact resume, bad input, NaN losses, half precision, safe and atomic checkpoints."""

import contextlib
import copy
import json
import os
import pickle
import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    BIN,
    USER_DIR,
    build_tiny,
    encode_lines,
    random_sentences,
    run_tool,
    train_args,
)
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.optim.dynamic_loss_scaler import DynamicLossScaler
from omegaconf import OmegaConf
from vae_fixtures import make_data_bin

from fairseq_vae.criterions.elbo import capacity_at
from fairseq_vae.models.latent import LOGVAR_MAX, LOGVAR_MIN
from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig
from fairseq_vae.text.check_text import text_problems


def train_records(out):
    """fairseq-train's per-update json records (--log-format json --log-interval 1) by update."""
    records = [
        json.loads(line.split("| train_inner |", 1)[1])
        for line in out.splitlines()
        if "| train_inner |" in line
    ]
    return {int(record["num_updates"]): record for record in records}


def model_params(checkpoint):
    return checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))["model"]


def max_param_difference(a, b):
    first, second = model_params(a), model_params(b)
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


# --- resume ---------------------------------------------------------------------------------

RESUME_OBJECTIVES = {
    "beta": ["--kl-schedule", "cyclical", "--kl-cycle-updates", "6", "--kl-ramp-fraction", "0.5"],
    "capacity": [
        "--kl-objective",
        "capacity",
        "--capacity-max",
        "5",
        "--capacity-updates",
        "10",
        "--capacity-gamma",
        "1",
    ],
}


def train_until_first_checkpoint(args):
    """Starts fairseq-train and SIGKILLs it as soon as it logs a finished checkpoint write."""
    command = [os.path.join(BIN, "fairseq-train"), *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in process.stdout:
        log.append(line)
        if "Saved checkpoint" in line:
            process.kill()
            break
    log.append(process.communicate(timeout=300)[0])
    assert process.returncode == -signal.SIGKILL, "".join(log)[-3000:]


@pytest.mark.parametrize("objective", sorted(RESUME_OBJECTIVES))
def test_resume_after_a_kill_continues_exactly(data_bin, tmp_path, objective):
    # 400 sentences make about 8 batches: a checkpoint every 4 updates is mid-epoch, and the
    # resumed run crosses into epoch 2
    options = [
        "--max-update",
        "14",
        "--save-interval-updates",
        "4",
        "--log-format",
        "json",
        "--log-interval",
        "1",
        *RESUME_OBJECTIVES[objective],
    ]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole = train_records(run_tool("fairseq-train", *train_args(data_bin, whole_dir, *options)))
    train_until_first_checkpoint(train_args(data_bin, cut_dir, *options))
    state = checkpoint_utils.load_checkpoint_to_cpu(str(cut_dir / "checkpoint_last.pt"))
    resumed_from = state["optimizer_history"][-1]["num_updates"]
    assert 0 < resumed_from < 14

    out = run_tool("fairseq-train", *train_args(data_bin, cut_dir, *options))
    assert f"(epoch 1 @ {resumed_from} updates)" in out
    resumed = train_records(out)
    assert sorted(resumed) == list(range(resumed_from + 1, 15))
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.kl_cycle_updates, cfg.kl_ramp_fraction, cfg.max_update = 6, 0.5, 14
    for update, record in resumed.items():
        for key in ("loss", "nll_loss", "kl", "elbo", "beta", "capacity"):
            assert record.get(key) == whole[update].get(key), (update, key)
        # the step that made update u ran with update_num u - 1
        if objective == "beta":
            assert float(record["beta"]) == pytest.approx(kl_beta(update - 1, cfg), abs=1e-4)
        else:
            assert float(record["capacity"]) == pytest.approx(capacity_at(update - 1, 5, 10))
    last = "checkpoint_last.pt"
    assert max_param_difference(whole_dir / last, cut_dir / last) <= 1e-6


def run_failing(tool, *args):
    """Runs a console script that must fail; returns its last line on stderr."""
    result = subprocess.run(
        [os.path.join(BIN, tool), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_resume_with_another_max_update_is_refused_unless_the_cycles_stay(data_bin, tmp_path):
    # cycles of 6 / 2 = 3 updates; resumed with --max-update 12 they would be 6 updates long
    log = ["--log-format", "json", "--log-interval", "1", "--kl-ramp-fraction", "0.5"]
    first = ["--max-update", "6", "--kl-cycles", "2", *log]
    run_tool("fairseq-train", *train_args(data_bin, tmp_path, *first))
    saved = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))
    assert saved["extra_state"]["train_iterator"]["kl_schedule"]["updates_per_cycle"] == 3.0

    longer = ["--max-update", "12", "--kl-cycles", "2", *log]
    last = run_failing("fairseq-train", *train_args(data_bin, tmp_path, *longer))
    assert last == (
        "fairseq-train: error: the checkpoint's cyclical KL schedule has cycles of 3 updates "
        "(--max-update 6 / --kl-cycles 2), but this run's options give 6 (--max-update 12 / "
        "--kl-cycles 2): beta would change mid-run. Resume with options that give 3 (as "
        "--max-update 6 / --kl-cycles 2 did); to train longer with the same cycles, pass "
        "--kl-cycle-updates 3"
    )
    # the advised options resume, and beta goes on with cycles of 3: 0, 2/3 ramp... by hand
    same_cycles = ["--max-update", "12", "--kl-cycle-updates", "3", *log]
    out = run_tool("fairseq-train", *train_args(data_bin, tmp_path, *same_cycles))
    assert "@ 6 updates)" in out
    resumed = train_records(out)
    assert sorted(resumed) == list(range(7, 13))
    # update u ran with update_num u - 1; ramp over 1.5 of each 3 updates: 0, 2/3, 1
    beta = [float(resumed[u]["beta"]) for u in range(7, 13)]
    assert beta == pytest.approx([0, 2 / 3, 1, 0, 2 / 3, 1], abs=1e-4)


# --- bad input ------------------------------------------------------------------------------

LONG = " ".join(f"w{i}" for i in range(40))  # 41 tokens with its end of sentence


@pytest.fixture(scope="module")
def bad_data_bin(tmp_path_factory):
    """A data-bin whose train and valid splits hold empty and over-long sentences, and whose
    dictionary (with the w<i> words of LONG) is larger than data_bin's."""
    raw = tmp_path_factory.mktemp("raw-bad")
    train = random_sentences(100, seed=0)
    train[3] = train[20] = ""
    train[10] = LONG
    valid = random_sentences(10, seed=1)
    valid = valid[:5] + [""] + valid[5:] + [LONG]  # lines 6 and 12
    (raw / "train.txt").write_text("\n".join(train) + "\n")
    (raw / "valid.txt").write_text("\n".join(valid) + "\n")
    (raw / "test.txt").write_text("")
    dest = tmp_path_factory.mktemp("data-bin-bad")
    run_tool(
        "fairseq-preprocess",
        "--only-source",
        "--trainpref",
        raw / "train.txt",
        "--validpref",
        raw / "valid.txt",
        "--testpref",
        raw / "test.txt",
        "--destdir",
        dest,
        "--workers",
        "1",
    )
    return str(dest), valid


def test_empty_and_too_long_sentences_are_skipped_with_a_count(bad_data_bin, tmp_path):
    data, valid = bad_data_bin
    save_dir = tmp_path / "checkpoints"
    out = run_tool(
        "fairseq-train",
        *train_args(
            data,
            save_dir,
            "--max-update",
            "2",
            "--max-source-positions",
            "32",
            "--max-target-positions",
            "32",
        ),
    )
    train = os.path.join(data, "train")
    assert f"{train}: skipping 2 of 100 sentences, empty (lines 4, 21 " in out
    assert f"{train}: skipping 1 of 100 sentences, longer than 32 tokens" in out
    assert "(lines 11 of the text" in out
    assert "invalid sizes" not in out  # fairseq's own filter found nothing left to drop
    valid_line = [line for line in out.splitlines() if "valid on 'valid' subset" in line][-1]
    assert "| bsz 10 |" in valid_line  # 12 sentences less the empty and the long one

    # sample ids stay line numbers: fairseq-generate's S-<id> is line id + 1 of valid.txt
    out = run_tool(
        "fairseq-generate",
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        save_dir / "checkpoint_last.pt",
        "--gen-subset",
        "valid",
        "--cpu",
        "--max-source-positions",
        "32",
        "--max-target-positions",
        "32",
    )
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    assert sorted(map(int, sources)) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert all(valid[int(i)] == text for i, text in sources.items())


LONGER_THAN_THE_CHECKPOINT = " ".join(["the cat sat on the mat"] * 50)  # 301 tokens: 256 < 301


def test_generate_skips_sentences_longer_than_the_checkpoints_positions(
    data_bin, tiny_checkpoint, tmp_path
):
    # bart_vae_small has 256 positions, the task's default is 1024: fairseq-generate sets the
    # task up from its own command line, without --max-source-positions here
    sentences = random_sentences(6, seed=9)
    sentences[3] = LONGER_THAN_THE_CHECKPOINT
    data = make_data_bin(str(tmp_path / "long"), data_bin, {"test": sentences})
    out = run_tool(
        "fairseq-generate",
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        tiny_checkpoint,
        "--gen-subset",
        "test",
        "--beam",
        "1",
        "--cpu",
    )
    test = os.path.join(data, "test")
    assert f"{test}: skipping 1 of 6 sentences, longer than 256 tokens" in out
    assert "(lines 4 of the text" in out
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    assert sorted(map(int, sources)) == [0, 1, 2, 4, 5]
    assert all(sentences[int(i)] == text for i, text in sources.items())
    assert len(re.findall(r"^H-\d+\t", out, flags=re.M)) == 5


@pytest.mark.parametrize("buffer_size", ["1", "2"])
def test_interactive_skips_an_input_line_longer_than_the_checkpoints_positions(
    data_bin, tiny_checkpoint, buffer_size
):
    lines = ["the cat sat", LONGER_THAN_THE_CHECKPOINT, "a big dog ran", "the red mat"]
    out = run_tool(
        "fairseq-interactive",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        tiny_checkpoint,
        "--beam",
        "1",
        "--cpu",
        "--buffer-size",
        buffer_size,
        input="\n".join(lines) + "\n",
    )
    assert "skipping input line 2: longer than 256 tokens" in out
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    assert sources == {"0": lines[0], "2": lines[2], "3": lines[3]}
    assert sorted(re.findall(r"^H-(\d+)\t", out, flags=re.M)) == ["0", "2", "3"]


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--kl-schedule", "sawtooth", "--sawtooth-period", "0"],
            "fairseq-train: error: --sawtooth-period must be a positive number of updates, got 0",
        ),
        (
            ["--kl-schedule", "sawtooth", "--sawtooth-ratio", "0"],
            "fairseq-train: error: --sawtooth-ratio must be in (0, 1], the fraction of the period "
            "that ramps, got 0.0",
        ),
        (
            ["--kl-zero-fraction", "0.5", "--kl-ramp-fraction", "0.75"],
            "fairseq-train: error: --kl-zero-fraction 0.5 plus --kl-ramp-fraction 0.75 is above "
            "1: beta would never reach --kl-beta-max 1.0 within a cycle",
        ),
        (
            ["--kl-objective", "capacity", "--free-bits", "0.5"],
            "fairseq-train: error: --free-bits 0.5 has no effect with --kl-objective capacity (it "
            "applies to the beta objective only): drop one of them",
        ),
        (
            ["--kl-objective", "capacity", "--kl-schedule", "sawtooth"],
            "fairseq-train: error: --kl-schedule sawtooth: --kl-objective capacity does not use "
            "beta or its schedule (its weight is --capacity-gamma, its target --capacity-max): "
            "drop them, or use --kl-objective beta",
        ),
    ],
)
def test_unworkable_options_stop_fairseq_train_before_training(
    data_bin, tmp_path, options, message
):
    last = run_failing(
        "fairseq-train", *train_args(data_bin, tmp_path, "--max-update", "3", *options)
    )
    assert last == message
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_empty_split_is_a_clear_error(bad_data_bin, tmp_path):
    data, _ = bad_data_bin
    result = subprocess.run(
        [
            os.path.join(BIN, "fairseq-train"),
            *train_args(data, tmp_path, "--max-update", "1", "--valid-subset", "test"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    empty = f"split 'test' is empty: {data}/test.bin holds no sentences"
    assert last == f"fairseq-train: error: {empty}"
    assert "Traceback" not in result.stderr  # the plugin's own error: one line


def test_missing_data_bin_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-data-bin")
    result = subprocess.run(
        [os.path.join(BIN, "fairseq-train"), *train_args(missing, tmp_path, "--max-update", "1")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fairseq-train: error: data folder '{missing}' does not exist")


def test_dictionary_that_does_not_match_the_checkpoint_is_a_clear_error(
    bad_data_bin, tiny_checkpoint
):
    data, _ = bad_data_bin  # its dictionary is larger than the one tiny_checkpoint saw
    result = subprocess.run(
        [
            os.path.join(BIN, "fairseq-validate"),
            data,
            "--user-dir",
            USER_DIR,
            "--task",
            "text_vae",
            "--path",
            tiny_checkpoint,
            "--cpu",
            "--max-tokens",
            "400",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(
        r"fairseq-validate: error: the checkpoint's "
        r"dictionary has \d+ entries but this task's "
        r"has \d+ \(encoder.embed_tokens.weight\): preprocess the data with the "
        r"checkpoint's dict.txt",
        last,
    ), last


def test_dictionary_of_the_same_size_in_another_order_is_refused(
    data_bin, tiny_checkpoint, tmp_path
):
    # fairseq-preprocess on other text with a saturated vocabulary: same size, other ids
    lines = open(os.path.join(data_bin, "dict.txt")).read().splitlines()
    other = tmp_path / "other"
    other.mkdir()
    (other / "dict.txt").write_text("\n".join(reversed(lines)) + "\n")

    def load(checkpoint, data):
        return checkpoint_utils.load_model_ensemble_and_task([checkpoint], {"data": str(data)})

    with pytest.raises(ValueError) as error:
        load(tiny_checkpoint, other)
    assert (
        f"checkpoint {tiny_checkpoint} was trained with another dictionary than "
        f"{other / 'dict.txt'}" in str(error.value)
    )
    load(tiny_checkpoint, data_bin)  # its own dictionary loads

    # a checkpoint from before the checksum was recorded loads as it always did
    state = torch.load(tiny_checkpoint)
    del state["model"]["dictionary_sha256"]
    old = str(tmp_path / "checkpoint_old.pt")
    torch.save(state, old)
    models, _, task = load(old, other)
    assert len(task.source_dictionary) == len(lines) + 4


def test_check_text_names_files_and_lines_of_bad_text(tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_bytes(b"the cat\n\nsat \xff on\n  \nthe mat\n")
    good = tmp_path / "valid.txt"
    good.write_text("the cat sat\n")
    assert text_problems(str(good)) == []
    assert text_problems(str(bad)) == [
        f"{bad}: 1 line is not UTF-8 (line 3 at byte 5)",
        f"{bad}: 2 lines are empty (lines 2, 4)",
    ]
    # as scripts/prepare_data.sh runs it: a plain script, exit status 1, one line per problem
    result = subprocess.run(
        [sys.executable, os.path.join(USER_DIR, "text", "check_text.py"), str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"fairseq_vae.text.check_text: error: {bad}: 1 line is not UTF-8 (line 3 at byte 5)",
        f"fairseq_vae.text.check_text: error: {bad}: 2 lines are empty (lines 2, 4)",
    ]


# --- NaN losses -----------------------------------------------------------------------------


def tiny_batch(task, n=4):
    tokens, lengths = encode_lines(task.source_dictionary, random_sentences(n))
    eos = torch.full((n, 1), task.source_dictionary.eos())
    prev = torch.cat([eos, tokens[:, :-1]], dim=1)  # not BART's exact shift; any input will do
    net_input = {"src_tokens": tokens, "src_lengths": lengths, "prev_output_tokens": prev}
    return {"net_input": net_input, "target": tokens, "ntokens": int(lengths.sum())}


def nan_logits(module, inputs, output):
    return output[0] * float("nan"), output[1]


def infinite_mu(module, inputs, output):
    output[1]["mu"] = output[1]["mu"] + 1e30  # mu^2 overflows fp32: KL = inf, NLL unaffected
    return output


def nan_bag_of_words(module, inputs, output):
    if "bow_logits" in output[1]:  # training only
        output[1]["bow_logits"] = output[1]["bow_logits"] * float("nan")
    return output


@pytest.mark.parametrize(
    "hook, term, extra",
    [
        (nan_logits, "NLL is", []),
        (infinite_mu, "KL is", []),
        (nan_bag_of_words, "bag-of-words NLL is", ["--bow-loss-weight", "1"]),
    ],
)
def test_non_finite_loss_names_the_term(dict_dir, hook, term, extra):
    task, model, args = build_tiny(dict_dir, *extra)
    criterion = task.build_criterion(args)
    sample = tiny_batch(task)
    model.train()
    assert torch.isfinite(criterion(model, sample)[0])
    model.register_forward_hook(hook)
    with pytest.raises(FloatingPointError, match=f"at update 0: {term} not finite"):
        criterion(model, sample)
    model.eval()  # validation only reports: no exception
    validation_loss = criterion(model, sample)[0]
    # the bag-of-words term is not part of the validation loss
    assert torch.isfinite(validation_loss) == (hook is nan_bag_of_words)


def test_diverging_fairseq_train_stops_and_names_the_term(data_bin, tmp_path):
    result = subprocess.run(
        [
            os.path.join(BIN, "fairseq-train"),
            *train_args(
                data_bin, tmp_path, "--max-update", "20", "--lr", "1e4", "--kl-schedule", "constant"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(
        r"FloatingPointError: training loss is (nan|inf) at update \d+: "
        r"(NLL|KL|NLL and KL) (is|are) not finite",
        last,
    ), last
    assert not (tmp_path / "checkpoint_last.pt").exists()


class RecordingOptimizer:
    """What task.train_step needs of an optimizer: ``backward``, and fairseq's ``scaler``
    (a DynamicLossScaler under --fp16, None under --bf16 and absent in fp32)."""

    def __init__(self, **scaler):
        self.__dict__.update(scaler)
        self.losses = []

    def backward(self, loss):
        self.losses.append(loss)


@pytest.mark.parametrize(
    "optimizer, raises",
    [
        (RecordingOptimizer(), True),  # fp32
        (RecordingOptimizer(scaler=None), True),  # --bf16: fairseq's FP16Optimizer, no scaler
        (RecordingOptimizer(scaler=DynamicLossScaler(init_scale=128.0)), False),  # --fp16
    ],
)
def test_train_step_checks_the_loss_unless_a_loss_scaler_handles_overflow(
    dict_dir, optimizer, raises
):
    task, model, args = build_tiny(dict_dir)
    criterion = task.build_criterion(args)
    model.register_forward_hook(nan_logits)
    sample = tiny_batch(task)
    if raises:
        with pytest.raises(FloatingPointError, match="at update 5: NLL is not finite"):
            task.train_step(sample, model, criterion, optimizer, update_num=5)
        assert optimizer.losses == []  # stopped before the backward pass
    else:
        # the scaler sees the overflow in the gradients, skips the update and lowers its scale
        loss, _, _ = task.train_step(sample, model, criterion, optimizer, update_num=5)
        assert torch.isnan(loss) and len(optimizer.losses) == 1
    # and the next fp32 step checks again: the switch follows the optimizer of each step
    with pytest.raises(FloatingPointError):
        task.train_step(sample, model, criterion, RecordingOptimizer(), update_num=6)


# --- half precision -------------------------------------------------------------------------

PRECISIONS = {
    "autocast-bf16": lambda m: (m, torch.autocast("cpu", dtype=torch.bfloat16)),
    "bf16": lambda m: (m.bfloat16(), contextlib.nullcontext()),  # what --bf16 trains
    "fp16": lambda m: (m.half(), contextlib.nullcontext()),  # what --fp16 trains
}


@pytest.mark.parametrize(
    "precision, scale",
    [
        ("autocast-bf16", 1.0),
        ("autocast-bf16", 1e4),
        ("bf16", 1.0),
        ("bf16", 1e4),
        ("fp16", 1.0),
        ("fp16", 1e4),  # the pooling sums in fp32: an fp16 sum would pass 65504
    ],
)
def test_half_precision_keeps_the_latent_and_kl_in_fp32(dict_dir, precision, scale):
    task, model, args = build_tiny(dict_dir)
    criterion = task.build_criterion(args)
    sample = tiny_batch(task)
    model, context = PRECISIONS[precision](copy.deepcopy(model))
    model.train()
    # scale > 1: encoder states far beyond a trained model's, as from a diverging run
    model.encoder.layers[-1].register_forward_hook(lambda module, inputs, out: out * scale)
    with context:
        loss, _, logging_output = criterion(model, sample)
        _, extra = model(**sample["net_input"])
    mu, logvar, kl = extra["mu"], extra["logvar"], logging_output["kl"]
    assert mu.dtype == logvar.dtype == kl.dtype == loss.dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in (mu, logvar, kl, loss))
    assert LOGVAR_MIN <= logvar.min() and logvar.max() <= LOGVAR_MAX
    if scale > 1:
        assert logvar.min() == LOGVAR_MIN or logvar.max() == LOGVAR_MAX  # the clamp binds
    loss.backward()
    if precision == "fp16" and scale > 1:
        return  # fp16 gradients of such activations overflow: fairseq's loss scaler skips them
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- safe checkpoints -----------------------------------------------------------------------


def test_checkpoint_resaved_after_fairseqs_loader_loads_with_weights_only(
    tiny_checkpoint, tmp_path
):
    state = checkpoint_utils.load_checkpoint_to_cpu(tiny_checkpoint)
    assert OmegaConf.is_config(state["cfg"])  # what DictConfig, ListConfig & co. come from
    resaved = str(tmp_path / "resaved.pt")
    checkpoint_utils.torch_persistent_save(state, resaved)
    again = torch.load(resaved)  # weights_only=True, torch's default
    assert again["cfg"]["model"].latent_dim == state["cfg"]["model"].latent_dim
    assert checkpoint_utils.load_checkpoint_to_cpu(resaved)["model"].keys() == state["model"].keys()


class RunsCodeOnLoad:
    """Unpickling this calls ``function(*args)``: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_checkpoint_that_would_run_code_is_refused(data_bin, tiny_checkpoint, tmp_path, how):
    marker = tmp_path / "MARKER"
    payload = {
        "os.system": RunsCodeOnLoad(os.system, f"touch {marker}"),
        "exec": RunsCodeOnLoad(exec, f"open({str(marker)!r}, 'w').close()"),
    }[how]
    state = torch.load(tiny_checkpoint)
    state["extra_state"]["payload"] = payload
    evil = str(tmp_path / "checkpoint_evil.pt")
    torch.save(state, evil)
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load checkpoint {evil}: "):
        checkpoint_utils.load_checkpoint_to_cpu(evil)
    assert not marker.exists()
    if how == "os.system":  # and what the user of the command-line tools sees
        result = subprocess.run(
            [
                os.path.join(BIN, "fairseq-validate"),
                data_bin,
                "--user-dir",
                USER_DIR,
                "--task",
                "text_vae",
                "--path",
                evil,
                "--cpu",
                "--max-tokens",
                "400",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"_pickle.UnpicklingError: refusing to load checkpoint {evil}")
        assert "GLOBAL posix.system" in last
        assert not marker.exists()


def test_torch_force_no_weights_only_load_cannot_switch_the_safety_off(
    data_bin, tiny_checkpoint, tmp_path
):
    marker = tmp_path / "MARKER"
    state = torch.load(tiny_checkpoint)
    state["extra_state"]["payload"] = RunsCodeOnLoad(os.system, f"touch {marker}")
    evil = str(tmp_path / "checkpoint_evil.pt")
    torch.save(state, evil)
    # torch's documented switch: a torch.load that does not pass weights_only runs the pickle
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    control = subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({evil!r})"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert marker.exists(), control.stderr[-2000:]
    marker.unlink()
    # the plugin's tools pass weights_only=True explicitly: the switch does not reach them
    for tool, args in [
        ("fairseq-validate", ["--task", "text_vae", "--max-tokens", "400"]),
        ("fairseq-vae-eval", ["--iw-samples", "2", "--no-bleu"]),
    ]:
        result = subprocess.run(
            [
                os.path.join(BIN, tool),
                data_bin,
                "--user-dir",
                USER_DIR,
                "--path",
                evil,
                "--cpu",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert f"refusing to load checkpoint {evil}" in last, result.stderr[-3000:]
        assert not marker.exists(), tool


RECORDED = []


@pytest.mark.parametrize(
    "key, value",
    [
        ("common.tensorboard_logdir", "${oc.env:HOME}"),  # reads the environment at access
        ("checkpoint.save_dir", "runs/${h13_record:leak}"),  # any registered resolver runs
        ("task.kl_schedule", "${h13_record:${optimization.max_update}}"),
    ],
)
def test_resolver_interpolation_in_a_checkpoint_config_is_refused(
    tiny_checkpoint, tmp_path, key, value
):
    if not OmegaConf.has_resolver("h13_record"):
        OmegaConf.register_new_resolver("h13_record", lambda x: RECORDED.append(x) or str(x))
    state = torch.load(tiny_checkpoint)
    group, name = key.split(".")
    state["cfg"][group][name] = value
    path = str(tmp_path / "checkpoint_resolver.pt")
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"refusing to load checkpoint {path}: .*{key} = "):
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        OmegaConf.to_container(state["cfg"], resolve=True)  # what reading the options does
    assert RECORDED == []


def test_node_references_in_a_checkpoint_config_still_load(tiny_checkpoint, tmp_path):
    # fairseq's own configs refer to other options: II("optimization.max_update")
    state = torch.load(tiny_checkpoint)
    state["cfg"]["task"]["max_update"] = "${optimization.max_update}"
    state["cfg"]["optimization"]["max_update"] = 77
    path = str(tmp_path / "checkpoint_reference.pt")
    torch.save(state, path)
    assert checkpoint_utils.load_checkpoint_to_cpu(path)["cfg"].task.max_update == 77


# --- atomic checkpoint writes ---------------------------------------------------------------

WRITE_AND_DIE = """
import os, resource, signal, sys
import torch
import fairseq_vae  # noqa: F401 (the plugin, as fairseq-train --user-dir imports it)
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.optim.dynamic_loss_scaler import DynamicLossScaler

new, target, how = sys.argv[1:]
state = torch.load(new)
# the kernel kills a process that writes past RLIMIT_FSIZE (Python ignores SIGXFSZ by default)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
limit = os.path.getsize(new) // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if how == "copy":  # how save_checkpoint writes checkpoint_last.pt from checkpoint_E_U.pt
    PathManager.copy(new, target, overwrite=True)
else:  # how it writes the first file of a save
    checkpoint_utils.torch_persistent_save(state, target)
"""


@pytest.mark.parametrize("how", ["copy", "save"])
def test_process_killed_while_writing_leaves_the_previous_checkpoint(
    tiny_checkpoint, tmp_path, how
):
    last = tmp_path / "checkpoint_last.pt"
    PathManager.copy(tiny_checkpoint, str(last), overwrite=True)
    before = model_params(last)
    state = torch.load(tiny_checkpoint)
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    new = tmp_path / "checkpoint_1_100.pt"
    torch.save(state, new)

    result = subprocess.run(
        [sys.executable, "-c", WRITE_AND_DIE, str(new), str(last), how],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGXFSZ, result.stderr[-3000:]
    after = model_params(last)  # still readable, and still the previous checkpoint
    assert all(torch.equal(before[k], after[k]) for k in before)

    PathManager.copy(str(new), str(last), overwrite=True)  # uninterrupted, it does replace it
    assert torch.equal(
        model_params(last)["encoder.mlp_mu.0.weight"], state["model"]["encoder.mlp_mu.0.weight"]
    )
