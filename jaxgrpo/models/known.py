"""config.json of the papers' models, so ``jaxgrpo plan`` can size them without their weights.

Only architectures (no weights, no tokenizers); a local checkpoint directory always takes precedence.
Architecture fields as in each model's config.json on the Hugging Face hub (written here from it; only sizes matter).
"""

_QWEN25_15B = dict(
    model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-6,
    hidden_act="silu", use_sliding_window=False, bos_token_id=151643,
)

CONFIGS = {
    "google/gemma-3-1b-it": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=512, sliding_window_pattern=6,
        rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None, attention_bias=False,
        attn_logit_softcapping=None, final_logit_softcapping=None, cache_implementation="hybrid", bos_token_id=2,
        eos_token_id=[1, 106], pad_token_id=0),
    "Qwen/Qwen3-1.7B": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, hidden_act="silu", attention_bias=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=28, bos_token_id=151643,
        eos_token_id=151645),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2,
        pad_token_id=2),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(
        _QWEN25_15B, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643,
        max_window_layers=21),
    "Qwen/Qwen2.5-Math-1.5B": dict(
        _QWEN25_15B, rope_theta=10000.0, tie_word_embeddings=True, eos_token_id=151643,
        max_position_embeddings=4096, max_window_layers=21),
}
