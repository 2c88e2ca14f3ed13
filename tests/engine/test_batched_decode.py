"""The batched decode forward: every sequence's logits at every step equal those of its lone decode."""

import pytest
import torch

from segcache.config import ServeConfig
from segcache.engine.engine import _batching_verdict
from segcache.engine.runner import Runner

PROMPTS = [(1, 2, 3, 4, 5), (7, 8, 9), (10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), (21,)]


def lone_logits(runner: Runner, prompt: tuple[int, ...], steps: int) -> list[torch.Tensor]:
    state = runner.start([], len(prompt) + steps)
    runner.prefill_part(state, prompt)
    logits = [state.last_logits]
    for _ in range(steps):
        logits.append(runner.decode_step(state, int(logits[-1].argmax())))
    return logits


def test_each_row_of_a_batched_decode_equals_its_lone_decode_bit_for_bit(load):
    runner = Runner(load("default", "bfloat16"))
    steps = 6
    states = []
    for prompt in PROMPTS:   # different lengths: each sequence attends at its own position
        state = runner.start([], len(prompt) + steps)
        runner.prefill_part(state, prompt)
        states.append(state)
    batched = [[s.last_logits] for s in states]
    for _ in range(steps):
        rows = runner.decode_batch(states, [int(history[-1].argmax()) for history in batched])
        for history, row in zip(batched, rows):
            history.append(row)
    for prompt, history in zip(PROMPTS, batched):
        for step, (got, want) in enumerate(zip(history, lone_logits(runner, prompt, steps))):
            assert torch.equal(got, want), f"prompt of {len(prompt)} tokens, step {step}: logits differ"


@pytest.mark.parametrize("weights", ["bf16", "int4"])
def test_sixteen_rows_each_get_the_bits_of_their_lone_decode(load, weights):
    """The largest default batch, in the default weight format too: rows of 5..20 tokens of context.

    Where the start-up check finds a projection whose rows change with the batch, the engine decodes one
    sequence per forward, so there is no batched answer to compare: measured on a Zen 4 EPYC (no AMX),
    oneDNN's bfloat16 matmul over 1,536 inputs (down_proj) gives a row of a batch different bits than
    alone in a third of random batches, while the block kernels' rows never depend on the batch."""
    runner = Runner(load("default", "bfloat16", weights))
    verdict = _batching_verdict(ServeConfig(model="default", dtype="bfloat16", weights=weights, max_batch=16),
                                runner)
    if not verdict.batched:
        assert weights != "int4", verdict.reason
        pytest.skip(f"the engine does not batch {weights} decode here: {verdict.reason}")
    prompts = [tuple(range(100 + row, 105 + 2 * row)) for row in range(16)]
    steps = 2
    states = []
    for prompt in prompts:
        state = runner.start([], len(prompt) + steps)
        runner.prefill_part(state, prompt)
        states.append(state)
    batched = [[s.last_logits] for s in states]
    for _ in range(steps):
        for history, row in zip(batched, runner.decode_batch(states, [int(h[-1].argmax()) for h in batched])):
            history.append(row)
    for prompt, history in zip(prompts, batched):
        assert all(torch.equal(got, want) for got, want in zip(history, lone_logits(runner, prompt, steps)))
