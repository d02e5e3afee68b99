"""Helpers shared by the benchmarks: synthetic experiments, fresh instances, timing in subprocesses."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def write_synthetic_experiment(
    root: Path, n_concepts: int, k: int, generation_templates: int, generators: int, evaluation_templates: int, judges: int
) -> Path:
    """An experiment folder in the real layout, sized by its counts (descriptions are one line)."""
    raw = root / "1_raw"
    if raw.exists():
        shutil.rmtree(raw)
    (raw / "concepts" / "descriptions-paragraph").mkdir(parents=True)
    concept_ids = [f"c{i:04d}" for i in range(n_concepts)]
    (raw / "concepts" / "concepts_metadata.csv").write_text(
        "concept_id,name,active\n" + "".join(f"{c},Concept {c},true\n" for c in concept_ids)
    )
    for c in concept_ids:
        (raw / "concepts" / "descriptions-paragraph" / f"{c}.txt").write_text(f"A short description of {c}.")
    for kind, count, text in (
        ("generation", generation_templates, "Combine: {% for c in concepts %}{{ c.name }}: {{ c.content }}\n{% endfor %}"),
        ("evaluation", evaluation_templates, "Judge this and end with SCORE: <n>.\n{{ response }}\n"),
    ):
        (raw / f"{kind}_templates").mkdir()
        ids = [f"{kind[:3]}-t{i}" for i in range(count)]
        (raw / f"{kind}_templates.csv").write_text(
            "template_id,template_name,description,active\n" + "".join(f"{t},{t},bench,true\n" for t in ids)
        )
        for t in ids:
            (raw / f"{kind}_templates" / f"{t}.txt").write_text(text)
    rows = [f"gen-m{i},bench/gen-m{i},bench,gen-m{i},true,false\n" for i in range(generators)]
    rows += [f"judge-m{i},bench/judge-m{i},bench,judge-m{i},false,true\n" for i in range(judges)]
    (raw / "llm_models.csv").write_text("id,model,provider,display_name,for_generation,for_evaluation\n" + "".join(rows))
    (raw / "experiment.toml").write_text(f'k = {k}\ndescription_level = "paragraph"\n')
    return root


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O), from /proc/stat.

    Used instead of RUSAGE_CHILDREN, which misses the runner's workers: they are children of its
    forkserver, not of the process we wait for. Run benchmarks on an otherwise idle machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def fresh_home(path: Path) -> Path:
    """A new DAGSTER_HOME with the project's instance configuration."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", path / "dagster.yaml")
    return path


def run_measured(code: str, env: dict) -> dict:
    """Run `code` in a fresh Python process; it prints one JSON object last. Adds wall, CPU and peak RSS."""
    wrapper = (
        "import json, resource, sys, time\n"
        "__t0 = time.perf_counter()\n"
        f"{code}\n"
        "__r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(json.dumps({**RESULT, 'process_wall_s': time.perf_counter() - __t0,"
        " 'cpu_s': __r.ru_utime + __r.ru_stime, 'peak_rss_mb': __r.ru_maxrss / 1024}))\n"
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", wrapper], env={**os.environ, **env}, capture_output=True, text=True, cwd=REPO
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["outer_wall_s"] = time.perf_counter() - started
    return result


def tree_pss_mb(root_pid: int) -> float:
    """Memory of a process and all its descendants, as the sum of their proportional set sizes (a
    page shared by n of them counts 1/n in each), in MB; 0 for what already exited."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
        except OSError:
            pass
    return total
