"""Export an "mgm" language model as a Hugging Face Transformers directory.

`export_mgm_hf(model, directory)` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)` loads
(with `subfolder="model_5"`, the seed's layout, a folder of it), offline, without Cerebrum
installed:
    config.json                     the architecture (the MGMConfig fields) and an auto_map
    configuration_cerebrum_mgm.py   a PretrainedConfig
    modeling_cerebrum_mgm.py        a PreTrainedModel + GenerationMixin around the network
    mgm_core.py, mgm_manifolds.py, mgm_routing.py, mgm_gpt.py
                                    the network: cerebrum/models/mgm.py, cerebrum/nn/
                                    manifolds.py, cerebrum/nn/routing.py and cerebrum/models/
                                    gpt.py, copied at export time with their imports of each
                                    other rewritten as relative imports (one implementation)
    model.safetensors               the weights
    cerebrum_tokenizer.json         the tokenizer (Cerebrum's format; ids are what generate
                                    takes)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                    the same tokenizer for `AutoTokenizer.from_pretrained`
                                    (see `cerebrum.hf.write_tokenizer`); with a subfolder,
                                    also at the root, where the seed's snippet loads it
The exported model computes Cerebrum's logits, so greedy `generate()` gives the same tokens
(tested in a fresh process). The wrapper recomputes the prefix at every step (no cache).

`cerebrum.hf.export_hf` reaches this exporter once `cerebrum.hf.EXPORTERS` has an "mgm" entry
(`EXPORTERS["mgm"] = cerebrum.hf_mgm.export_mgm_hf`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

from safetensors.torch import save_file

from cerebrum.hf import write_tokenizer

MODEL_TYPE = "cerebrum_mgm"
#: module -> file name in the exported directory; the order rewrites imports.
_SOURCES = {"cerebrum.models.gpt": "mgm_gpt", "cerebrum.nn.manifolds": "mgm_manifolds",
            "cerebrum.nn.routing": "mgm_routing", "cerebrum.models.mgm": "mgm_core"}

_CONFIGURATION = '''"""Configuration of an MGM exported by Cerebrum."""

from transformers import PretrainedConfig


class CerebrumMGMConfig(PretrainedConfig):
    model_type = "cerebrum_mgm"

    def __init__(self, mgm=None, **kwargs):
        self.mgm = dict(mgm or {})
        # the names Transformers' generation utilities read
        self.vocab_size = self.mgm.get("vocab_size", 259)
        self.hidden_size = self.mgm.get("hidden_dim", 128)
        self.num_hidden_layers = self.mgm.get("n_layer", 4)
        self.num_attention_heads = self.mgm.get("num_heads", 4)
        self.max_position_embeddings = self.mgm.get("block_size", 256)
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)  # the wrapper recomputes the prefix
        super().__init__(**kwargs)
'''

_MODELING = '''"""An MGM (mixture of geometric experts) exported by Cerebrum, as a
Transformers causal language model."""

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_cerebrum_mgm import CerebrumMGMConfig
from .mgm_core import MGM, MANIFOLDS, MGMBlock, MGMConfig
from .mgm_gpt import rotary_tables


class CerebrumMGMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CerebrumMGMConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}

    def __init__(self, config):
        super().__init__(config)
        fields = dict(config.mgm)
        fields["manifolds"] = tuple(fields["manifolds"])
        fields["curvature_range"] = tuple(fields["curvature_range"])
        self.model = MGM(MGMConfig(**fields))
        self.post_init()

    def _init_weights(self, module):
        # weights come from the checkpoint; the non-persistent buffers (rotary tables, the
        # experts' type one-hots) are rebuilt wherever Transformers materialises the model
        if isinstance(module, MGM):
            c = module.config
            cos, sin = rotary_tables(c.block_size, c.head_dim - c.head_dim % 2 or 2,
                                     c.rope_base, device=module.embed.weight.device)
            module.register_buffer("rope_cos", cos, persistent=False)
            module.register_buffer("rope_sin", sin, persistent=False)
        elif isinstance(module, MGMBlock):
            types = [MANIFOLDS.index(t) for t in module.expert_types]
            onehot = F.one_hot(torch.tensor(types), len(MANIFOLDS)).float()
            module.register_buffer("type_onehot", onehot.to(module.norm1.weight.device),
                                   persistent=False)

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        logits = self.model(input_ids)[0]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}
'''


def _standalone_sources() -> dict[str, str]:
    """{file name: source} of the network's four modules with their imports of each other
    made relative; refuses (RuntimeError) a source that imports anything else of Cerebrum."""
    import importlib

    out = {}
    for module_name, file_name in _SOURCES.items():
        source = inspect.getsource(importlib.import_module(module_name))
        for other, other_file in _SOURCES.items():
            source = source.replace(f"from {other} import", f"from .{other_file} import")
        if "import cerebrum" in source or "from cerebrum" in source:
            raise RuntimeError(f"{module_name} imports another part of cerebrum; the MGM "
                               "export ships only the network's own modules")
        out[f"{file_name}.py"] = source
    return out


def _write_code(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_cerebrum_mgm.py").write_text(_CONFIGURATION)
    (directory / "modeling_cerebrum_mgm.py").write_text(_MODELING)
    for name, source in _standalone_sources().items():
        (directory / name).write_text(source)


def export_mgm_hf(model, directory, *, subfolder: str | None = None) -> Path:
    """Write an "mgm" model (from `Cerebrum.models[...]`, `from_checkpoint` or `fit`) as a
    Transformers directory (module docstring); returns the path of the model's folder.

    With `subfolder` ("model_5"), the model goes to directory/subfolder, loaded by
    `from_pretrained(directory, subfolder=subfolder, trust_remote_code=True)` (the seed's
    layout); the code files are written to directory as well, where Transformers looks for
    remote code whatever the subfolder."""
    from cerebrum.brain.mgm import MGMLanguageModel

    if not isinstance(model, MGMLanguageModel):
        raise TypeError(f"export_mgm_hf takes an 'mgm' language model, got "
                        f"{type(model).__name__}")
    tokenizer = model._require_tokenizer()
    root = Path(directory)
    if subfolder is not None:
        if not isinstance(subfolder, str) or not subfolder or "/" in subfolder \
                or subfolder in (".", ".."):
            raise ValueError(f"subfolder must be one folder name, got {subfolder!r}")
        _write_code(root)
    directory = root if subfolder is None else root / subfolder
    directory.mkdir(parents=True, exist_ok=True)
    fields = dataclasses.asdict(model.mgm.config)
    config = {
        "model_type": MODEL_TYPE, "architectures": ["CerebrumMGMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_cerebrum_mgm.CerebrumMGMConfig",
                     "AutoModelForCausalLM": "modeling_cerebrum_mgm.CerebrumMGMForCausalLM"},
        "mgm": fields, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id, "tie_word_embeddings": True,
        "vocab_size": fields["vocab_size"], "max_position_embeddings": fields["block_size"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    _write_code(directory)
    weights = {f"model.{k}": v.detach().cpu().clone()
               for k, v in model.mgm.state_dict().items() if k != "head.weight"}
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    for folder in {root, directory}:  # the seed loads the tokenizer from the repository root
        write_tokenizer(tokenizer, folder, max_length=fields["block_size"])
    return directory
