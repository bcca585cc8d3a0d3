"""Export a trained language model as a Hugging Face Transformers directory.

`export_hf(model, directory)` writes, for a family with an exporter (the "gpt" family today), a
directory that
`transformers.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)` loads:
    config.json                     the architecture and an auto_map to the two files below
    configuration_cerebrum_gpt.py   a PretrainedConfig
    modeling_cerebrum_gpt.py        a PreTrainedModel + GenerationMixin around the network
    cerebrum_gpt_core.py            the network itself: cerebrum/models/gpt.py, copied
                                    verbatim at export time (one implementation; the file
                                    imports only torch, so the directory works without
                                    Cerebrum installed)
    model.safetensors               the weights
    cerebrum_tokenizer.json         the tokenizer (Cerebrum's format; ids are what generate takes)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                    the same tokenizer for `AutoTokenizer.from_pretrained(dir)`
                                    (a PreTrainedTokenizerFast, no remote code): the same ids,
                                    <bos> first as Cerebrum's generate prompts; not written for
                                    a BPE saved before the standard byte-level scheme (a
                                    warning says so)
The exported model computes the same logits as Cerebrum's, so `generate()` with greedy
decoding produces the same tokens (tested). It recomputes the whole prefix at each step (no
key/value cache in the exported wrapper).
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

from safetensors.torch import save_file

from cerebrum.models import gpt as gpt_module

MODEL_TYPE = "cerebrum_gpt"

_CONFIGURATION = '''"""Configuration of a GPT exported by Cerebrum."""

from transformers import PretrainedConfig


class CerebrumGPTConfig(PretrainedConfig):
    model_type = "cerebrum_gpt"

    def __init__(self, vocab_size=259, block_size=256, n_layer=4, n_head=4, n_embd=128,
                 dropout=0.0, rope_base=10000.0, mlp="swiglu", qk_norm=False,
                 bigram_buckets=0, **kwargs):
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.dropout, self.rope_base = dropout, rope_base
        self.mlp, self.qk_norm, self.bigram_buckets = mlp, qk_norm, bigram_buckets
        # the names Transformers' generation utilities read
        self.num_hidden_layers, self.hidden_size = n_layer, n_embd
        self.num_attention_heads, self.max_position_embeddings = n_head, block_size
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)  # the wrapper recomputes the prefix
        super().__init__(**kwargs)
'''

_MODELING = '''"""A GPT exported by Cerebrum, as a Transformers causal language model."""

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .cerebrum_gpt_core import GPT, GPTConfig, rotary_tables
from .configuration_cerebrum_gpt import CerebrumGPTConfig


class CerebrumGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CerebrumGPTConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = GPT(GPTConfig(
            vocab_size=config.vocab_size, block_size=config.block_size,
            n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
            dropout=config.dropout, rope_base=config.rope_base, mlp=config.mlp,
            qk_norm=config.qk_norm, bigram_buckets=config.bigram_buckets))
        self.post_init()

    def _init_weights(self, module):
        # weights come from the checkpoint; the rotary tables are not saved (non-persistent
        # buffers), so they are rebuilt wherever Transformers materialises the model
        if isinstance(module, GPT):
            c = module.config
            cos, sin = rotary_tables(c.block_size, c.n_embd // c.n_head, c.rope_base,
                                     device=module.embed.weight.device)
            module.register_buffer("rope_cos", cos, persistent=False)
            module.register_buffer("rope_sin", sin, persistent=False)

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        logits, _ = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}
'''


def _core_source() -> str:
    """cerebrum.models.gpt's source, verbatim: the file imports only torch (its docstring
    says why), which is checked here so that a Cerebrum import creeping in fails the export
    loudly instead of shipping a directory that cannot load."""
    source = inspect.getsource(gpt_module)
    if "import cerebrum" in source or "from cerebrum" in source:
        raise RuntimeError("cerebrum.models.gpt must not import cerebrum: the export ships it "
                           "as standalone code")
    return source


def export_hf(model, directory) -> Path:
    """Write a language model (from `Cerebrum.models[...]`, `from_checkpoint` or `fit`) as a
    Transformers directory; returns its path. Families with an exporter in `EXPORTERS` (the
    GPT and MGM) can be exported; others raise TypeError saying why (their `hf_export_note`)."""
    from cerebrum.brain.language_model import LanguageModel

    if not isinstance(model, LanguageModel):
        raise TypeError(f"export_hf takes a language model (a LanguageModel), got "
                        f"{type(model).__name__}")
    exporter = EXPORTERS.get(model.family)
    if exporter is None:
        raise TypeError(f"the {model.family!r} family cannot be exported to Hugging Face "
                        f"Transformers: {model.hf_export_note}")
    return exporter(model, Path(directory))


def _export_gpt(model, directory: Path) -> Path:
    """The "gpt" family's exporter (see the module docstring for the files)."""
    tokenizer = model._require_tokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    c = model.gpt.config
    config = {
        "model_type": MODEL_TYPE, "architectures": ["CerebrumGPTForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_cerebrum_gpt.CerebrumGPTConfig",
                     "AutoModelForCausalLM": "modeling_cerebrum_gpt.CerebrumGPTForCausalLM"},
        "vocab_size": c.vocab_size, "block_size": c.block_size, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_embd": c.n_embd, "dropout": c.dropout, "rope_base": c.rope_base,
        "mlp": c.mlp, "qk_norm": c.qk_norm, "bigram_buckets": c.bigram_buckets,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id, "tie_word_embeddings": True,
        "max_position_embeddings": c.block_size,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "configuration_cerebrum_gpt.py").write_text(_CONFIGURATION)
    (directory / "modeling_cerebrum_gpt.py").write_text(_MODELING)
    (directory / "cerebrum_gpt_core.py").write_text(_core_source())
    weights = {f"model.{k}": v.detach().cpu().clone()
               for k, v in model.gpt.state_dict().items() if k != "head.weight"}
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    write_tokenizer(tokenizer, directory, max_length=c.block_size)
    return directory


def write_tokenizer(tokenizer, directory: Path, *, max_length: int | None = None) -> None:
    """The tokenizer files of an exported directory (module docstring)."""
    (directory / "cerebrum_tokenizer.json").write_text(json.dumps(tokenizer.to_dict()))
    transformers_json = tokenizer.to_transformers_json()
    if transformers_json is None:
        warnings.warn(
            "this model's BPE tokenizer predates the standard byte-level scheme, so "
            "Transformers cannot reproduce its ids: no tokenizer.json was written "
            "(cerebrum_tokenizer.json holds it); retrain to get an AutoTokenizer",
            UserWarning, stacklevel=3)
        return
    (directory / "tokenizer.json").write_text(transformers_json)
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              "clean_up_tokenization_spaces": False}
    if max_length is not None:
        config["model_max_length"] = max_length
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def _export_mgm(model, directory: Path) -> Path:
    """The "mgm" family's exporter (cerebrum.hf_mgm: its own modeling code)."""
    from cerebrum.hf_mgm import export_mgm_hf

    return export_mgm_hf(model, directory)


#: family name -> exporter(model, directory) -> directory
EXPORTERS = {"gpt": _export_gpt, "mgm": _export_mgm}
