"""The package's shape: no import cycles, estimators apart from the command, and every script the
README runs directly can be run as typed."""

import ast
import os
import re
import stat
import subprocess
import sys

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "fairseq_vae")


def imported_modules(path):
    """Every module name an ``import`` or ``from ... import`` of the file names (absolute only)."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    return names


def module_path(module):
    """The .py file of a dotted module name of the package (a package's is its __init__.py)."""
    path = os.path.join(ROOT, *module.split("."))
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def package_imports():
    """{module: set of fairseq_vae modules it imports anywhere (also inside functions)}."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            package = parts[:-1]  # what a relative import of level 1 starts from
            targets = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = package[: len(package) - node.level + 1] if node.level else []
                    stem = ".".join(base + ([node.module] if node.module else []))
                    # "from p import m" names the module p.m where there is one; "from .m
                    # import f" the module m
                    targets.update(
                        f"{stem}.{alias.name}"
                        if os.path.exists(module_path(f"{stem}.{alias.name}"))
                        else stem
                        for alias in node.names
                    )
            graph[module] = {t for t in targets if t.startswith("fairseq_vae")}
    return graph


def test_no_module_of_the_package_imports_itself_through_others():
    graph = package_imports()
    assert "fairseq_vae.models.hub_interface" in graph["fairseq_vae.models.bart_vae"]

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    # packages' __init__ files import their children by design: only module-to-module edges
    cycles = [
        m
        for m in graph
        if not m.endswith(("fairseq_vae", ".models", ".criterions", ".tasks"))
        and reaches(m, m, {m})
    ]
    assert not cycles, f"modules that import themselves through others: {cycles}"


# Imports go down these layers or stay in one (docs/design.md, "Layout"); a module is placed by
# the longest prefix that names it.
LAYERS = [
    [
        "fairseq_vae.text",
        "fairseq_vae.synth",
        "fairseq_vae.schedules",
        "fairseq_vae.denoising",
        "fairseq_vae.atomic_files",
        "fairseq_vae.metrics.estimators",
        "fairseq_vae.metrics.eval_report",
        "fairseq_vae.metrics.sample_quality",
        "fairseq_vae.metrics.transfer_quality",
        "fairseq_vae.metrics.conditional_quality",
    ],
    ["fairseq_vae.latent_space"],
    ["fairseq_vae.models", "fairseq_vae.criterions", "fairseq_vae.tasks"],
    ["fairseq_vae.metrics.prior_samples", "fairseq_vae.shims"],
    ["fairseq_vae.cli"],
]


def layer_of(module):
    found = [
        (len(prefix), i)
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert found, f"{module} is in no layer of LAYERS"
    return max(found)[1]


def test_imports_go_down_the_layers():
    graph = package_imports()
    upward = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m != "fairseq_vae"  # the package's __init__ imports its parts by design
        for t in targets
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, f"imports up the layers: {upward}"
    # the check bites: the hub reads estimators (down), the eval step reads the hub (down)
    hub, step = "fairseq_vae.models.hub_interface", "fairseq_vae.metrics.prior_samples"
    assert layer_of(step) > layer_of(hub) > layer_of("fairseq_vae.metrics.estimators")


def layout_listed_modules():
    """The module files docs/design.md's layout block names: a line ``fairseq_vae/x/`` opens a
    folder, indented lines name its files (comma-separated), ``fairseq_vae/x.py`` a file."""
    design = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    block = design.split("## Layout", 1)[1].split("```", 2)[1]
    listed, folder = set(), None
    for line in block.splitlines():
        if not line.strip():
            continue
        names = line[2:].split("  ")[0] if line.startswith("  ") else line.split()[0]
        if line.startswith("  "):
            assert folder, f"an indented line outside a folder: {line!r}"
            listed.update(folder + n.strip() for n in names.split(","))
        elif names.endswith("/"):
            folder = names
        else:
            folder = None
            listed.add(names)
    return listed


def test_the_design_layout_names_every_module():
    listed = layout_listed_modules()
    files = {
        os.path.relpath(os.path.join(folder, name), ROOT)
        for folder, _, names in os.walk(PACKAGE)
        for name in names
        if name.endswith(".py")
    }
    # a folder's __init__.py holds only imports or a docstring; the top one is listed
    unlisted = {
        f
        for f in files
        if f not in listed and not (f.endswith("/__init__.py") and f.count("/") > 1)
    }
    assert not unlisted, f"modules docs/design.md's layout does not name: {sorted(unlisted)}"
    stale = listed - files
    assert not stale, f"docs/design.md's layout names files that are gone: {sorted(stale)}"


def test_estimators_are_a_module_of_their_own_that_the_command_imports():
    from fairseq_vae.cli import evaluate
    from fairseq_vae.metrics import estimators

    shared = [
        "gaussian_log_density",
        "standard_normal_log_density",
        "iw_log_likelihood",
        "mutual_information",
        "active_units",
        "probe_factors",
        "read_labels",
    ]
    for name in shared:
        assert getattr(estimators, name).__module__ == "fairseq_vae.metrics.estimators", name
    defined = {
        n.name
        for n in ast.parse(open(evaluate.__file__).read()).body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef))
    }
    assert not defined.intersection(shared), "evaluate.py redefines estimators"
    # pure functions of tensors: neither fairseq's command line nor the rest of the package
    assert package_imports()["fairseq_vae.metrics.estimators"] == set()
    assert not [m for m in imported_modules(estimators.__file__) if m.startswith("fairseq")]


def readme_commands():
    """The repository files the README runs directly: a path at the start of a shell line or of
    an inline code span, e.g. ``scripts/sample.py -n 10`` (not ``python scripts/x.py``)."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    found = re.findall(r"(?:^|`)\s*((?:scripts|benchmarks)/[\w.-]+\.(?:py|sh))\b", readme, re.M)
    return sorted(set(found))


def test_every_script_the_readme_runs_is_executable_with_a_shebang():
    commands = readme_commands()
    assert {"scripts/sample.py", "scripts/interpolate.py", "scripts/prepare_data.sh"} <= set(
        commands
    )
    for command in commands:
        path = os.path.join(ROOT, command)
        assert os.stat(path).st_mode & stat.S_IXUSR, f"{command} is not executable (chmod +x)"
        first = open(path, encoding="utf-8").readline()
        assert first.startswith("#!/usr/bin/env "), f"{command} has no #!/usr/bin/env line"


def test_readme_python_scripts_run_as_typed(tmp_path):
    """As after `source .venv/bin/activate`: this interpreter's folder first on PATH."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for command in ["scripts/sample.py", "scripts/interpolate.py", "scripts/plot_training.py"]:
        result = subprocess.run(
            [command, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command} --help:\n{result.stderr}"
        assert result.stdout.startswith("usage:"), result.stdout


def test_the_option_reference_is_what_the_code_registers():
    """docs/options.md is written by scripts/options_reference.py: a new or changed option
    without a regenerated reference fails here."""
    written = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "options_reference.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    committed = open(os.path.join(ROOT, "docs", "options.md"), encoding="utf-8").read()
    assert written == committed, "run: python scripts/options_reference.py > docs/options.md"
    for flag in ("--bn-vae-gamma", "--kl-schedule", "--free-bits", "--latent-source"):
        assert f"| `{flag}` |" in committed


def test_no_module_of_the_package_is_over_500_lines():
    sizes = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                sizes[os.path.relpath(path, ROOT)] = sum(1 for _ in open(path, encoding="utf-8"))
    assert not {path: n for path, n in sizes.items() if n > 500}


BENCHMARKS = os.path.join(ROOT, "benchmarks")


def test_each_benchmark_study_imports_the_harness_and_no_other_study():
    """benchmarks/harness.py holds what the studies share; a study imports it and, where it has
    them, its own parts (<study>_<part>.py: its report, a corpus of its own), never another
    study, and stays short."""
    modules = {name[: -len(".py")] for name in os.listdir(BENCHMARKS) if name.endswith(".py")}
    parts = {m for m in modules if m.rsplit("_", 1)[0] in modules - {m}}
    studies = modules - {"harness"} - parts
    assert {"ptb", "pretrained", "prior", "control", "overhead"} <= studies
    for study in sorted(studies):
        path = os.path.join(BENCHMARKS, f"{study}.py")
        local = imported_modules(path) & modules
        allowed = {"harness"} | {m for m in parts if m.startswith(f"{study}_")}
        assert local <= allowed, f"benchmarks/{study}.py imports {sorted(local - allowed)}"
        lines = sum(1 for _ in open(path, encoding="utf-8"))
        assert lines <= 500, f"benchmarks/{study}.py has {lines} lines (at most 500)"
    for part in parts:
        local = imported_modules(os.path.join(BENCHMARKS, f"{part}.py")) & modules
        assert local <= {"harness"}, f"benchmarks/{part}.py imports {sorted(local)}"
    assert imported_modules(os.path.join(BENCHMARKS, "harness.py")) & modules == set()
