"""The engine's attention: the kernel for a few new tokens agrees with torch's SDPA on
every shape it takes, does not depend on the thread count, runs in the engine's
decode steps with transformers' answers, and other shapes go to SDPA."""

from pathlib import Path

import pytest
import torch

from ctxproto.models.kernels import load_kernels
from ctxproto.runtime import GenerationParams, attention
from tests.conftest import needs_kernel_cpu
from tests.runtime.conftest import chat
from tests.runtime.test_engine import run

pytestmark = needs_kernel_cpu


def causal_at_end(tokens: int, length: int) -> torch.Tensor:
    """The mask transformers builds for new tokens after cached KV: token i sees
    keys up to ``length - tokens + i``."""
    positions = torch.arange(length)
    return (positions <= torch.arange(length - tokens, length).unsqueeze(1))[None, None]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=causal_at_end(query.size(2), key.size(2)),
        scale=query.size(-1) ** -0.5,
        enable_gqa=True,
    )
    return out.transpose(1, 2)


def kv_views(batch: int, heads: int, length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value as the engine's KV layers hand them over: views with spare room."""
    store = torch.randn(2, batch, heads, length + 37, dim)
    return store[0, :, :, :length], store[1, :, :, :length]


@pytest.mark.parametrize(
    ("batch", "query_heads", "kv_heads", "tokens", "length", "dim"),
    [
        (1, 9, 3, 1, 1, 64),
        (1, 9, 3, 1, 255, 64),
        (1, 9, 3, 1, 257, 64),  # one token past a chunk
        (2, 9, 3, 1, 1800, 64),
        (1, 4, 4, 1, 300, 128),  # no grouping
        (1, 16, 2, 1, 513, 128),
        (1, 9, 3, 2, 2, 64),  # a prefill of two tokens
        (1, 9, 3, 7, 260, 64),  # a verify whose first tokens see only the first chunk
        (2, 9, 3, 5, 1800, 64),
        (1, 16, 2, 8, 513, 128),
    ],
)
def test_kernel_agrees_with_sdpa(batch, query_heads, kv_heads, tokens, length, dim):
    assert load_kernels()
    torch.manual_seed(length)
    query = torch.randn(batch, query_heads, tokens, dim)
    key, value = kv_views(batch, kv_heads, length, dim)
    out = torch.ops.ctxproto.decode_attention(query, key, value, dim**-0.5)
    assert out.shape == (batch, tokens, query_heads, dim)
    torch.testing.assert_close(out, sdpa(query, key, value), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [8, 77, 300])
def test_kernel_agrees_with_sdpa_where_most_weights_underflow(length):
    """Scores up to hundreds apart, so exp runs down to its clamp (2^-126, built in
    the exponent bits where the CPU has no scalef) and up to 1, in whole vectors and
    in a chunk's last few scores. Small integers make every score exact, so only
    exp and the order of the sums can differ from SDPA."""
    assert load_kernels()
    generator = torch.Generator().manual_seed(length)
    query = torch.randint(-3, 4, (1, 9, 2, 64), generator=generator).float()
    key = torch.randint(-3, 4, (1, 3, length, 64), generator=generator).float()
    _, value = kv_views(1, 3, length, 64)
    out = torch.ops.ctxproto.decode_attention(query, key, value, 1.0)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=causal_at_end(2, length), scale=1.0, enable_gqa=True
    )
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_a_tokens_result_does_not_depend_on_the_tokens_after_it():
    torch.manual_seed(1)
    query = torch.randn(1, 9, 6, 64)
    key, value = kv_views(1, 3, 600, 64)
    together = torch.ops.ctxproto.decode_attention(query, key, value, 0.125)
    first_three = torch.ops.ctxproto.decode_attention(
        query[:, :, :3].contiguous(), key[:, :, :597], value[:, :, :597], 0.125
    )
    assert torch.equal(together[:, :3], first_three)


@pytest.mark.parametrize("dim", [64, 128])
def test_a_left_padded_rows_result_is_its_result_alone(dim):
    """A decode step of rows of different lengths, left-padded to one KV (batch.py):
    each row's chunks start at its own first key, so it gets the bits it gets alone."""
    assert load_kernels()
    torch.manual_seed(dim)
    starts = [0, 1, 200, 300, 555]  # chunk edges of the padded KV fall mid-row
    query = torch.randn(len(starts), 2 * dim // 16, 1, dim)
    key, value = kv_views(len(starts), dim // 32, 600, dim)
    together = torch.ops.ctxproto.decode_attention(query, key, value, 0.125, starts)
    for row, start in enumerate(starts):
        alone = torch.ops.ctxproto.decode_attention(
            query[row : row + 1],
            key[row : row + 1, :, start:],
            value[row : row + 1, :, start:],
            0.125,
        )
        assert torch.equal(together[row : row + 1], alone)
    with pytest.raises(RuntimeError, match="first token"):
        torch.ops.ctxproto.decode_attention(query, key, value, 0.125, [0, 0, 0, 0, 600])


def test_the_padding_mask_of_a_batched_step_is_recognised():
    from transformers.masking_utils import sdpa_mask

    padding = torch.tensor([[0] * 30 + [1] * 10, [1] * 40, [0] * 39 + [1]])
    mask = sdpa_mask(
        batch_size=3,
        q_length=1,
        kv_length=40,
        q_offset=39,
        attention_mask=padding.bool(),
        allow_is_causal_skip=False,
    )
    assert mask is not None
    query = torch.randn(3, 9, 1, 64)
    key, value = kv_views(3, 3, 40, 64)
    assert attention._kernel_attends(query, key, value, mask, 0.0, {}) == [30, 0, 39]
    holed = mask.clone()
    holed[0, 0, 0, 35] = False
    assert attention._kernel_attends(query, key, value, holed, 0.0, {}) is None
    nothing_seen = mask.clone()
    nothing_seen[2] = False
    assert attention._kernel_attends(query, key, value, nothing_seen, 0.0, {}) is None


def test_kernel_sums_in_one_order_whatever_the_threads():
    torch.manual_seed(0)
    query = torch.randn(1, 9, 3, 64)
    key, value = kv_views(1, 3, 1000, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    together = torch.ops.ctxproto.decode_attention(query, key, value, 0.125)
    torch.set_num_threads(1)
    try:
        alone = torch.ops.ctxproto.decode_attention(query, key, value, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, alone)


@pytest.mark.parametrize(("tokens", "length"), [(1, 40), (3, 40), (7, 300), (64, 64)])
def test_transformers_masks_after_cached_kv_are_recognised(tokens, length):
    from transformers.masking_utils import sdpa_mask

    mask = sdpa_mask(
        batch_size=1,
        q_length=tokens,
        kv_length=length,
        q_offset=length - tokens,
        allow_is_causal_skip=False,
    )
    assert attention._visible_from(torch, mask, 1, tokens, length) == [0]
    assert attention._visible_from(torch, mask, 1, tokens, length + 1) is None


def test_other_shapes_go_to_sdpa():
    query = torch.randn(1, 9, 1, 64)
    key, value = kv_views(1, 3, 40, 64)
    attends = attention._kernel_attends
    assert attends(query, key, value, None, 0.0, {})
    several = torch.randn(1, 9, 3, 64)
    assert attends(several, key, value, causal_at_end(3, 40), 0.0, {})
    assert not attends(several, key, value, None, 0.0, {})  # causal from the start
    assert not attends(several, key, value, causal_at_end(3, 40).logical_not(), 0.0, {})
    assert not attends(several, key, value, causal_at_end(3, 40).float(), 0.0, {})
    too_many = torch.randn(1, 9, attention.kernel_tokens() + 1, 64)
    long_key, long_value = kv_views(1, 3, 2 * attention.kernel_tokens(), 64)
    mask = causal_at_end(too_many.size(2), long_key.size(2))
    assert not attends(too_many, long_key, long_value, mask, 0.0, {})
    batch = torch.randn(2, 9, 3, 64)
    keys2, values2 = kv_views(2, 3, 40, 64)
    assert not attends(batch, keys2, values2, causal_at_end(3, 40).expand(2, 1, 3, 40), 0.0, {})
    half = query.bfloat16()
    assert not attends(half, key.bfloat16(), value.bfloat16(), None, 0.0, {})
    for option in ("sliding_window", "softcap", "position_bias", "s_aux"):
        assert not attends(query, key, value, None, 0.0, {option: 16})
    assert not attends(query, key, value, None, 0.1, {})
    assert not attends(torch.randn(1, 9, 1, 80), *kv_views(1, 3, 40, 80), None, 0.0, {})


KNOWLEDGE = Path(__file__).parents[2] / "examples" / "knowledge"


def test_engine_decodes_on_the_kernel_with_transformers_answers(lm, engine, monkeypatch):
    kernel = torch.ops.ctxproto.decode_attention
    tokens_attended: list[int] = []

    def spy(query, key, value, scale, starts):
        tokens_attended.append(query.size(2))
        return kernel(query, key, value, scale, starts)

    monkeypatch.setattr(torch.ops.ctxproto, "decode_attention", spy)
    system = "\n\n".join(path.read_text() for path in sorted(KNOWLEDGE.glob("*.md")))
    messages = chat("How long is the warranty on the R7 router?", system)
    prompt = engine.encode_chat(messages)
    assert len(prompt) > 2 * 256  # the KV spans several chunks
    answer, _ = run(engine, messages, GenerationParams(max_new_tokens=24))
    with torch.no_grad():
        generated = lm.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert answer == generated[0, len(prompt) :].tolist()[: len(answer)]
    assert len(answer) > 4
    assert tokens_attended and min(tokens_attended) == 1
    # The next turn's prompt extends the cached one by a few tokens: a short
    # prefill under transformers' own end-aligned mask, on the kernel too.
    tokens_attended.clear()
    follow_up = [*messages, {"role": "assistant", "content": "It is two years."}]
    follow_up.append({"role": "user", "content": "Thanks!"})
    run(engine, follow_up, GenerationParams(max_new_tokens=2))
    suffix = len(engine.encode_chat(follow_up)) - len(prompt)  # past the cached prompt
    if suffix <= attention.kernel_tokens():  # with AVX2 (8 tokens), SDPA's are faster
        assert max(tokens_attended) > 1
    else:
        assert max(tokens_attended) == 1
