"""Model registry: the paper's GPT-3 shapes, LLaMA with grouped-query attention, test
models, per-device splits, GEMM / attention shapes and validation naming the field."""
import pytest

from rtl.config import preset
from sim.kv_layout import KVLayout
from sim.models import MODELS, ModelError, ModelShape, get_model


@pytest.mark.parametrize("name, d_model, heads, layers, tp, pp", [
    ("gpt3-7b", 4096, 32, 32, 4, 1),
    ("gpt3-13b", 5120, 40, 40, 4, 1),
    ("gpt3-30b", 7168, 56, 48, 4, 2),
    ("gpt3-175b", 12288, 96, 96, 8, 4),
])
def test_gpt3_as_the_paper_used_it(name, d_model, heads, layers, tp, pp):
    m = get_model(name)
    assert (m.d_model, m.heads, m.layers, m.tp, m.pp) == (d_model, heads, layers, tp, pp)
    assert m.d_head == 128 and m.ffn == 4 * d_model and m.kv_heads == heads
    assert m.heads_per_device == heads // tp and m.layers_per_device == layers // pp
    assert m.ffn_per_device == 4 * d_model // tp and m.activation == "gelu"


@pytest.mark.parametrize("name, kv_heads, ffn, layers", [
    ("llama2-7b", 32, 11008, 32), ("llama2-13b", 40, 13824, 40), ("llama2-70b", 8, 28672, 80),
    ("llama3-8b", 8, 14336, 32), ("llama3-70b", 8, 28672, 80),
])
def test_llama_shapes_with_grouped_query_attention(name, kv_heads, ffn, layers):
    m = get_model(name)
    assert (m.kv_heads, m.ffn, m.layers, m.activation) == (kv_heads, ffn, layers, "swiglu")
    assert m.heads % m.kv_heads == 0 and m.group_size == m.heads // kv_heads
    assert m.kv_heads_per_device * m.tp == kv_heads


def test_gemm_shapes_of_one_decode_step():
    qkv, proj, fc1, fc2 = get_model("gpt3-7b").gemms(batch=256)
    assert (qkv.m, qkv.k, qkv.n) == (256, 4096, 3 * 1024)         # 8 heads x 128 per device
    assert (proj.k, proj.n) == (1024, 4096)
    assert (fc1.k, fc1.n, fc2.k, fc2.n) == (4096, 4096, 4096, 4096)
    assert qkv.flops == 2 * 256 * 4096 * 3072
    g_qkv, _, g_fc1, g_fc2 = get_model("llama3-8b").gemms()
    assert g_qkv.n == (8 + 2 * 2) * 128                             # 8 q heads, 2 KV heads
    assert g_fc1.n == 2 * 14336 // 4 and g_fc2.k == 14336 // 4      # SwiGLU: gate + up


def test_attention_sizes():
    a = get_model("llama2-70b").attention(1000)
    assert (a.heads, a.kv_heads, a.d_head) == (8, 1, 128)
    assert a.logit_macs == a.attend_macs == 8 * 1000 * 128
    assert a.kv_bytes == 2 * 1 * 128 * 1000 * 2
    assert get_model("gpt3-7b").kv_bytes_per_token() == 2 * 1024 * 2 * 32


def test_test_models_fit_an_rtl_slice():
    for name in ("tiny-gpt", "small-gpt", "tiny-gqa"):
        m = get_model(name)
        assert m.d_head == 32 and m.layers == 2
        for config in ("tiny", "small", "channel"):
            KVLayout(preset(config), m)          # validates d_head against lanes and rows
    tiny = get_model("tiny-gpt")
    assert (tiny.d_model, tiny.heads) == (64, 2)
    assert (get_model("small-gpt").d_model, get_model("small-gpt").heads) == (128, 4)
    wide = get_model("tiny-gpt-h64")
    assert (wide.d_model, wide.heads, wide.d_head) == (64, 1, 64)
    KVLayout(preset("decode"), wide)


@pytest.mark.parametrize("changes, field", [
    ({"heads": 3}, "heads"),
    ({"kv_heads": 3}, "kv_heads"),
    ({"tp": 3}, "tp"),
    ({"kv_heads": 2, "tp": 4}, "tp"),
    ({"pp": 5}, "pp"),
    ({"activation": "relu"}, "activation"),
    ({"layers": 0}, "layers"),
    ({"d_head": 1.5}, "d_head"),
    ({"name": ""}, "name"),
])
def test_invalid_shapes_name_the_field(changes, field):
    base = dict(name="m", d_model=512, heads=4, layers=4, ffn=2048, tp=2, pp=2)
    with pytest.raises(ModelError) as error:
        ModelShape(**{**base, **changes})
    assert error.value.field == field
    assert str(error.value).startswith(f"ModelShape.{field}:")


def test_unknown_model_lists_the_known_names():
    with pytest.raises(ValueError) as error:
        get_model("gpt5")
    assert "gpt5" in str(error.value)
    for name in MODELS:
        assert name in str(error.value)
    assert get_model("GPT3-7B") is MODELS["gpt3-7b"]
