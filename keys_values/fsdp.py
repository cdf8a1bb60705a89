"""FSDP2 for a model too big for one GPU: whether it is asked for, whether it really runs, and the adapter
gathered from the shards. The training script asks it; accelerate (FSDP2, torch's fully_shard) does the work,
driven by accelerate_configs/fsdp2.yaml:

    accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 4 llama2_classification_multi_tasks.py ...

LoRA is applied before sharding; no device_map; every trainable (LoRA) parameter becomes a DTensor holding this
process's shard. Measured traps this module guards against (accelerate 1.15, transformers 5.23, peft 0.21):
- on a machine without GPUs accelerate keeps a launch with an FSDP config as MULTI_CPU and the Trainer wraps
  the model in DDP, silently: allow_on_cpu() makes it FSDP (what the tests run: 2 processes on gloo), and
  check_active() fails in one line whenever FSDP was asked for and is not what runs;
- peft's save_pretrained on the sharded model, main process only, fails (or, with FSDP1, writes an adapter with
  no tensors): full_adapter_state_dict() gathers the LoRA weights on every process, then the main one writes;
- bitsandbytes' paged optimizers cannot step DTensors: the training script uses adamw_torch under FSDP.
"""

from keys_values import environment
from utils import UserError


def requested():
    """`accelerate launch` with an FSDP config exports ACCELERATE_USE_FSDP=true to every process."""
    return environment.fsdp_requested()


def allow_on_cpu():
    """On a machine without GPUs, make accelerate run a launch with an FSDP config as FSDP (accelerate 1.15 only
    does so in its GPU branch and otherwise keeps MULTI_CPU: DDP). fully_shard itself works on CPUs over gloo.
    Call before the Trainer is made; a no-op when called again."""
    import accelerate.state as st
    from accelerate.utils import DistributedType

    if getattr(st.AcceleratorState.__init__, "_fsdp_on_cpu", False):
        return
    original = st.AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            st.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._fsdp_on_cpu = True
    st.AcceleratorState.__init__ = __init__


def check_active(trainer, model=None):
    """A UserError (one line) when FSDP was asked for and the Trainer does not run FSDP2, or, given the prepared
    model, when it is not sharded (not an FSDPModule, or a trainable parameter that is not a DTensor)."""
    if not requested():
        return
    acc = trainer.accelerator
    version = getattr(getattr(acc.state, "fsdp_plugin", None), "fsdp_version", None)
    running = f"{str(acc.distributed_type).split('.')[-1]} over {acc.num_processes} process(es), fsdp_version {version}"
    if not (trainer.is_fsdp_enabled and acc.is_fsdp2):
        raise UserError(f"FSDP2 was asked for (ACCELERATE_USE_FSDP) but the Trainer runs {running}: use "
                        "accelerate_configs/fsdp2.yaml (fsdp_version: 2) with accelerate launch")
    if model is not None:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        trainable = [p for p in model.parameters() if p.requires_grad]
        sharded = sum(isinstance(p, DTensor) for p in trainable)
        if not isinstance(model, FSDPModule) or sharded != len(trainable):
            raise UserError(f"FSDP2 was asked for but the model is not sharded ({sharded} of {len(trainable)} "
                            f"trainable parameters are shards; {running})")


def packed_digests(model):
    """{module name: SHA-256 of the bytes} of every packed 4-bit weight (bitsandbytes' Linear4bit), taken before
    sharding. Under FSDP2 the packed weights are stored in the compute dtype (bf16 or fp32, so that they can be
    sharded with the rest) and travel through the collectives as that dtype; a collective that canonicalised
    NaN bit patterns (which packed bytes contain: 0.08% of bf16 words in a 4-bit Llama) would corrupt weights
    while the loss stays finite. check_packed compares after sharding."""
    import hashlib

    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    return {name: hashlib.sha256(_bytes(m.weight)).hexdigest() for name, m in model.named_modules()
            if isinstance(m, bnb.nn.Linear4bit)}


def _bytes(tensor):
    """The raw bytes of a tensor (a DTensor all-gathered first: a collective, called on every process)."""
    import torch
    from torch.distributed.tensor import DTensor

    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return full.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()


def check_packed(model, digests, say=print):
    """The packed 4-bit weights, gathered from their shards, byte for byte as before sharding; a UserError
    naming the first weight whose bytes changed. Returns how many were checked."""
    import hashlib

    if not digests:
        return 0
    modules = dict(model.named_modules())
    changed = [name for name, digest in digests.items()
               if hashlib.sha256(_bytes(modules[name].weight)).hexdigest() != digest]
    if changed:
        raise UserError(f"FSDP2 changed the bytes of {len(changed)} packed 4-bit weight(s) ({changed[0]} first) "
                        "while sharding them: the collectives rewrote their bit patterns; train without --bnb "
                        "under FSDP2 on this machine, or on one process")
    say(f"FSDP2: the {len(digests)} packed 4-bit weights gathered from their shards are byte for byte as loaded")
    return len(digests)


def checked_at_start(trainer, digests=None):
    """A Trainer callback that runs check_active on the model the Trainer prepared, before the first step, and
    check_packed on its 4-bit weights (`digests`: packed_digests before sharding)."""
    from transformers import TrainerCallback

    class CheckSharded(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            check_active(trainer, trainer.model_wrapped)
            check_packed(trainer.model_wrapped, digests or {},
                         say=print if args.process_index == 0 else (lambda line: None))

    return CheckSharded()


def no_casts(trainer):
    """FSDP casts nothing: the Trainer's bf16 autocast computes in bf16 as in one process, gradients are reduced
    and accumulated in fp32. (accelerate's default policy for bf16 would reduce gradients in bf16, cast the
    model's outputs to bf16, and cast 4-bit weights stored in fp32 to bf16, which breaks them.)"""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    trainer.accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy()


def full_adapter_state_dict(model):
    """{name: full CPU tensor} of the model's trainable (LoRA) parameters, named as in model.state_dict(). Under
    FSDP2 each is a DTensor holding this process's shard, all-gathered with full_tensor(): a collective, so every
    process calls it (in the same order). Only the adapter is gathered, never the frozen base."""
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().to("cpu", copy=True)
            for name, p in model.named_parameters() if p.requires_grad}
