"""Every command of the README runs as typed.

The README's shell and Python code blocks, and the commands it writes inline, are read from
README.md itself and run in a scratch copy of the repository's layout, in the order a new user
would meet them. Only an update count or a sample count may be lowered (``OVERRIDES``), so that
the whole walk takes minutes; a command that cannot run here is listed in ``SKIPPED`` with the
reason, and a command that is neither run nor skipped fails the test, so a new command in the
README is either tested or explained.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import BIN, ROOT

README = os.path.join(ROOT, "README.md")

# flag -> the value the test runs with (updates and sample counts only)
OVERRIDES = {"--max-update": "8", "--iw-samples": "2", "--prior-samples": "3", "-n": "3"}

# a command's start -> why it is not run here
SKIPPED = {
    "make demo": "installs and trains for minutes; its script runs below as scripts/demo.py "
    "with fewer updates",
    "make test": "the suite this test belongs to",
    "source .venv/bin/activate": "a shell builtin; the test puts .venv/bin first on PATH",
    "torchrun": "needs GPUs",
    "hf download": "needs the network",
    "fairseq-vae-import-hf hf/bart-base": "needs a folder downloaded from the Hugging Face hub",
    "scripts/prepare_data.sh RAW_DIR": "a usage line: RAW_DIR and the BART folder are the "
    "reader's own",
    "fairseq-train data-bin/mycorpus": "needs a GPU (--fp16), bart.base's weights and the "
    "reader's corpus",
    "pip install": "an install step for a CUDA machine",
    "fairseq-preprocess --only-source": "names the step scripts/prepare_data.sh runs",
}


def readme_text():
    return open(README, encoding="utf-8").read()


def code_blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(block):
    """The block's commands: continuation lines joined, comments dropped; a ``for ... done``
    loop stays one command."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands, loop = [], []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("for ") or loop:
            loop.append(line)
            if line.startswith("done"):
                commands.append("\n".join(loop))
                loop = []
            continue
        commands.append(line)
    return commands


def inline_commands(text):
    """Inline code spans that are whole commands of the project's tools (fragments with
    ``...`` and option names are not)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", prose)]
    tools = ("fairseq-", "scripts/", "python ")
    return [s for s in spans if s.startswith(tools) and "..." not in s and " " in s]


def skip_reason(command):
    for start, reason in SKIPPED.items():
        if command.startswith(start):
            return reason
    return None


def lowered(command):
    """The command with the counts of OVERRIDES lowered, and nothing else changed."""
    for flag, value in OVERRIDES.items():
        command = re.sub(rf"(^|\s){re.escape(flag)}\s+\d+", rf"\g<1>{flag} {value}", command)
    return command


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder laid out like the repository (its data copied, its code linked) where the
    README's relative paths resolve and whatever the commands write stays."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("fairseq_vae", "scripts", "benchmarks", "pretrained"):
        if os.path.exists(os.path.join(ROOT, name)):
            os.symlink(os.path.join(ROOT, name), folder / name)
    for name in ("data-bin", "corpus"):
        shutil.copytree(os.path.join(ROOT, name), folder / name)
    (folder / "lines.txt").write_text("every team enjoys two tournaments at the arena .\n")
    return folder


def run(command, cwd, stdin=None, timeout=600):
    # the scratch folder's fairseq_vae (a link to this one) is the package the tools import,
    # as fairseq requires of the --user-dir folder they are given
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(cwd)
    result = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + command],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}\n{(result.stdout + result.stderr)[-3000:]}"
    return result.stdout + result.stderr


def test_the_readme_parses_into_the_commands_this_test_knows():
    text = readme_text()
    commands = [c for b in code_blocks(text, "bash") for c in shell_commands(b)]
    assert any(c.startswith("fairseq-train data-bin/synth") for c in commands)
    assert any(c.startswith("for rank in 0 1") for c in commands)
    assert [c for c in commands if c.startswith("make")] == ["make demo", "make test"]
    assert len(code_blocks(text, "python")) == 1
    assert "fairseq-validate data-bin/synth --user-dir fairseq_vae --task text_vae --path " in (
        " ".join(inline_commands(text))
    )
    assert (
        lowered("x --max-update 1200 --max-update-y 3 -n 10")
        == "x --max-update 8 --max-update-y 3 -n 3"
    )


def test_every_readme_command_runs_as_typed(scratch):
    text = readme_text()
    blocks = [c for b in code_blocks(text, "bash") for c in shell_commands(b)]
    inline = inline_commands(text)
    ran, skipped = [], []

    # what make demo runs, with fewer updates and samples: it leaves checkpoints/demo
    demo = f"{sys.executable} scripts/demo.py --max-update 8 --iw-samples 2"
    out = run(demo, scratch)
    assert "fairseq-vae-eval |" in out and os.path.isfile(
        scratch / "checkpoints" / "demo" / "checkpoint_last.pt"
    )

    for command in blocks + inline:
        reason = skip_reason(command)
        if reason:
            skipped.append((command, reason))
            continue
        if command.startswith("scripts/prepare_data.sh corpus/synth synth"):
            continue  # rebuilds data-bin/synth: run last, below
        typed = lowered(command)
        if command.endswith("--save-dir checkpoints/mine"):
            # the Train command, with the logging the README says to add for plot_training
            typed += " --log-format json --log-interval 2 2>&1 | tee train.log"
        stdin = "every team enjoys two tournaments at the arena .\n"
        run(typed, scratch, stdin=stdin if "interactive" in command else None)
        ran.append(command)

    python = code_blocks(text, "python")[0]
    (scratch / "readme_example.py").write_text(python)
    run(f"{sys.executable} readme_example.py", scratch)

    rebuild = [c for c in inline if c.startswith("scripts/prepare_data.sh corpus/synth synth")]
    assert rebuild, "the README no longer says how data-bin/synth is made"
    run(rebuild[0], scratch)
    assert os.path.isfile(scratch / "data-bin" / "synth" / "train.bin")

    assert len(ran) >= 12, ran
    assert {reason for _, reason in skipped} <= set(SKIPPED.values())
