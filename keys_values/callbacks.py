"""The Trainer callbacks of a training run, and the stop signals they answer.

RunControl (1) logs the loss whenever a checkpoint is saved and at the last step, so that the log history of
every checkpoint covers every step before it (train_loss_of), (2) on SIGUSR1 or SIGTERM (a scheduler's time
limit or pre-emption) or Ctrl-C (SIGINT) saves a checkpoint at the end of the current optimizer step and stops
the training there (the run then exits with utils.RESUMABLE, or utils.INTERRUPTED after Ctrl-C; a second Ctrl-C
stops at once, as does a Ctrl-C before the first step), with every process of a distributed run agreeing on that
step, (3) gives each checkpoint's files the umask's mode, and (4) on --resume saves and logs at this run's
intervals, not the checkpoint's. Its signal handlers are installed only while `with control.handling_signals():`
runs (the training script: from the model's loading to the end of the final save), and the earlier ones put back
after."""

import os
import signal
from contextlib import contextmanager

from transformers import TrainerCallback

from keys_values.experiment import layout
from utils import follow_umask

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class RunControl(TrainerCallback):
    stop_requested = None  # the name of the signal that asked the run to stop, or None

    training = False  # whether the first step has begun (before it there is nothing a Ctrl-C would wait to save)

    def request_stop(self, signum, frame):
        if signum == signal.SIGINT and (self.stop_requested == "SIGINT" or not self.training):
            raise KeyboardInterrupt  # a second Ctrl-C, or one before the training began: at once
        self.stop_requested = signal.Signals(signum).name

    @property
    def interrupted(self):
        """Whether Ctrl-C (SIGINT) asked for the stop."""
        return self.stop_requested == "SIGINT"

    @contextmanager
    def handling_signals(self):
        """SIGUSR1, SIGTERM and SIGINT ask the run to stop at the end of its current step while the block runs."""
        before = {sig: signal.signal(sig, self.request_stop) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def agreed(self, args):
        """Whether any process of the run was asked to stop: one all-reduce of the flag, so that every process
        stops at the same step (a rank that stopped one step before the others would leave a collective waiting,
        or mismatched). The processes that were not signalled take the signal's name of the one that was."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return bool(self.stop_requested)
        codes = {None: 0, **{sig.name: k for k, sig in enumerate(STOP_SIGNALS, 1)}}
        flag = torch.tensor([codes.get(self.stop_requested, 1)], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.stop_requested:
            self.stop_requested = STOP_SIGNALS[int(flag.item()) - 1].name
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self.agreed(args):
            control.should_save = control.should_training_stop = True
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        # a resumed Trainer takes the checkpoint's save and logging intervals: this run's flags decide them
        before = (state.save_steps, state.logging_steps)
        state.compute_steps(args, state.max_steps)
        if state.global_step and before != (state.save_steps, state.logging_steps):
            print(f"--resume: saving every {state.save_steps} steps and logging every {state.logging_steps} "
                  f"from step {state.global_step} (the checkpoint's run: {before[0]} and {before[1]})")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # a checkpoint others can read, as the results
            follow_umask(os.path.join(args.output_dir, layout.checkpoint_name(state.global_step)))


def train_loss_of(log_history, global_step):
    """The mean training loss over all of a run's steps, from its log history (each logged loss is the mean
    over the steps since the previous log; a resumed run's history starts with the checkpoint's). None when
    the history does not cover the run's steps."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last == global_step and last > 0 else None
