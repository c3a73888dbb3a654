"""The servers the overhead benchmark measures, each started fresh and stopped after: surge as `make run` serves
it (admission on, a real key), vLLM's own OpenAI server, and the engine in-process (no HTTP at all)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._common import RequestResult, Sender, quiet_logs, run_closed_loop, summarize
from benchmarks._loadgen import LoadSpec, prompt_text
from cluster.config import PoolConfig, SurgeConfig, TierConfig
from cluster.env import engine_env
from cluster.serving import free_port, isolate_serve_ports, wait_ready

__all__ = ["BENCH_TIER", "Target", "in_process", "server_command", "surge", "vllm_server"]

# The enterprise tier with its rate limits lifted, so a long run measures the server rather than the limits;
# every admission check (key, tier, priority, shedding, reservation, settlement) still runs.
BENCH_TIER = "bench-enterprise"
Target = tuple[str, str | None]  # (base URL, API key)


def _with_key_store(config: SurgeConfig, directory: Path) -> tuple[SurgeConfig, str]:
    """`config` with a fresh SQLite key store holding one key of BENCH_TIER; returns the key."""
    from deployments.admission import open_store

    dsn = f"sqlite:///{directory / 'keys.db'}"
    lifted = config.admission.tiers["enterprise"].model_copy(
        update={"rpm": 10**9, "tpm": 10**12, "daily_token_quota": 10**15}
    )
    tiers: dict[str, TierConfig] = {**config.admission.tiers, BENCH_TIER: lifted}

    async def create() -> str:
        async with await open_store(dsn) as store:
            return (await store.create_key("overhead-bench", BENCH_TIER))[1]

    key = asyncio.run(create())
    admission = config.admission.model_copy(update={"key_store_dsn": dsn, "tiers": tiers})
    return config.model_copy(update={"admission": admission}), key


@contextmanager
def surge(config: SurgeConfig, startup_timeout_s: float) -> Iterator[Target]:
    """The app on a fresh local Ray, with a real key when admission is on."""
    from cluster.serving import serving

    isolate_serve_ports()
    with tempfile.TemporaryDirectory(prefix="surge-overhead-") as directory:
        key = None
        if config.admission.enabled:
            config, key = _with_key_store(config, Path(directory))
        with serving(config, startup_timeout_s=startup_timeout_s) as url:
            yield url, key


def server_command(pool: PoolConfig, port: int) -> list[str]:
    """`vllm.entrypoints.openai.api_server` with the pool's engine arguments as flags."""
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", pool.model_path(), "--served-model-name", pool.model_id,
        "--host", "127.0.0.1", "--port", str(port),
        # surge turns its access log off too
        "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    for key, value in pool.engine_args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else f"--no-{flag[2:]}")
        else:
            command += [flag, str(value)]
    return command


def _exited(process: subprocess.Popen[bytes]) -> Callable[[], None]:
    def check() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited with status {process.returncode} before it was healthy")

    return check


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it runs in a new session), SIGKILL if it lingers."""
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def vllm_server(pool: PoolConfig, startup_timeout_s: float) -> Iterator[Target]:
    """vLLM's OpenAI server on the pool's model and engine arguments; its log is kept only if it fails."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"surge-overhead-vllm-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(pool, port), env={**os.environ, **engine_env(pool)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(url, startup_timeout_s, path="/health", check_alive=_exited(process))
            yield url, None
        except Exception as exc:
            raise RuntimeError(f"vLLM server failed ({exc}); its output is in {log_path}") from exc
        finally:
            _stop_process_group(process)
    log_path.unlink()


def _engine_sender(engine: Any, spec: LoadSpec) -> Sender:
    from deployments.engines.base import SamplingSpec, TextPrompt

    sampling = SamplingSpec(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)

    async def send(i: int) -> RequestResult:
        start = time.perf_counter()
        token_ids = engine.tokenize(TextPrompt(prompt_text(spec, i)))  # surge's replica tokenizes too
        ttft_s: float | None = None
        tokens = 0
        async for chunk in engine.generate(f"bench-{uuid.uuid4().hex}", token_ids, sampling, 3):
            ttft_s = ttft_s if ttft_s is not None else time.perf_counter() - start
            tokens = chunk.completion_tokens
        return RequestResult(ttft_s, time.perf_counter() - start, tokens)

    return send


async def _in_process_levels(pool: PoolConfig, specs: dict[str, LoadSpec]) -> dict[str, Any]:
    from deployments.engines.vllm import VllmEngine

    engine = VllmEngine(pool.model_path(), pool.engine_args)
    try:
        levels = {}
        for name, spec in specs.items():
            send = _engine_sender(engine, spec)
            await run_closed_loop(send, 8, min(spec.concurrency, 4))  # warm-up, not recorded
            count = spec.requests or max(spec.concurrency * 4, round(spec.duration_s * 60))
            levels[name] = summarize(await run_closed_loop(send, count, spec.concurrency))
        return levels
    finally:
        engine.shutdown()


def _in_process_child(pool: PoolConfig, specs: dict[str, LoadSpec], results: Connection) -> None:
    # A fresh process: the engine env (OMP_NUM_THREADS…) is set before torch loads, as in a replica.
    os.environ.update(engine_env(pool))
    quiet_logs()
    try:
        results.send(("ok", asyncio.run(_in_process_levels(pool, specs))))
    except Exception as exc:
        results.send(("error", "".join(traceback.format_exception(exc, limit=6))))
    sys.stdout.flush()
    sys.stderr.flush()
    # The engine is already shut down; vLLM keeps the AsyncLLM alive through a cached traceback and its
    # __del__ fails noisily during interpreter teardown, so skip the teardown.
    os._exit(0)


def in_process(pool: PoolConfig, specs: dict[str, LoadSpec]) -> dict[str, Any]:
    """The engine floor: AsyncLLM driven in its own process, streamed levels only (no HTTP, no client process)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_in_process_child, args=(pool, specs, sender), name="overhead-in-process")
    child.start()
    sender.close()  # so that recv() fails instead of hanging if the child dies
    try:
        status, payload = receiver.recv()
    except EOFError:
        raise RuntimeError(f"in-process engine exited with status {child.exitcode}") from None
    finally:
        child.join(timeout=30)
    if status != "ok":
        raise RuntimeError(f"in-process engine failed:\n{payload}")
    return dict(payload)
