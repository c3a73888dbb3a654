"""`vllm bench serve` sending the load tests' own requests: `python -m tests.loadtests.vllm_bench ARGS`.

vLLM's CLI entry, pacing, request code and metrics as they are; only its sampler is replaced, by the first turns
of the bundled conversations (system prompt and customer turn, uniformly drawn, as `python -m loadtests` sends
them with `--max-turns 1`), so the two clients time the same requests and differ only in how they measure.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from loadtests.conversations import load_script

__all__ = ["first_turn_samples", "main"]


def first_turn_samples(args: argparse.Namespace, tokenizer: Any) -> list[Any]:
    """`args.num_prompts` first turns, seeded, each a chat request of `args.output_len` tokens."""
    from vllm.benchmarks.datasets import SampleRequest

    script, rng = load_script(), random.Random(args.seed)
    samples = []
    for i in range(args.num_prompts):
        turn = script.conversations[rng.randrange(len(script.conversations))][0]
        messages = [{"role": "system", "content": script.system_prompt}, {"role": "user", "content": turn}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        samples.append(SampleRequest(prompt=turn, prompt_len=len(tokenizer(text).input_ids),
                                     expected_output_len=args.output_len, request_id=f"surge-{i}",
                                     chat_messages=messages))
    return samples


def main(argv: list[str]) -> int:
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    serve.add_cli_args(parser)
    args = parser.parse_args(argv)
    if args.output_len is None:
        parser.error("--output-len is required")
    serve.get_samples = first_turn_samples  # type: ignore[assignment]
    serve.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
