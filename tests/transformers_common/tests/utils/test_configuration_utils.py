"""Stand-in for transformers' tests/utils/test_configuration_utils.py, which the 5.24.0 source distribution does not
ship. `ConfigTester.check_config_can_be_init_without_params`-style checks read `config_common_kwargs`: keyword
arguments of `PreTrainedConfig` set to values other than their defaults. Written here for SegFace's tests; the
check that uses it returns early for configs with sub-configs (SegFace has a backbone sub-config)."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
