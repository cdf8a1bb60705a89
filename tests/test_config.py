"""The command line as a user meets it: the original's shortened flags, --help with one help text and one default
per flag, one-line errors that say what to type instead."""

import argparse
import re

import pytest

import get_eval_tasks
import study
from keys_values import config
from utils import UserError

PARSERS = {"training": config.training_parser, "evaluation": config.evaluation_parser, "study": study.build_parser,
           "report": get_eval_tasks.build_parser}


@pytest.mark.parametrize("which", PARSERS)
def test_every_flag_has_a_help_text_and_one_default(which):
    parser = PARSERS[which]()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert text.strip(), f"{which}: {action.option_strings} has no help"
        assert text.count("default:") <= 1 and "(default: None)" not in text, text


def test_study_help_shows_its_defaults_and_the_papers_command(capsys):
    with pytest.raises(SystemExit):
        study.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NousResearch/Llama-2-7b-hf --bnb" in text and "(default: serial)" in text and "(default: 42)" in text


def test_the_originals_shortened_flags_are_accepted():
    args = config.training_config(["--epoch", "3", "--task", "boolq", "CB", "--lora_r", "4", "--target", "q_proj"])
    assert (args.epochs, args.tasks, args.lora_r, args.target_modules) == (3, ["boolq", "CB"], 4, ["q_proj"])
    assert config.evaluation_config(["--experiment", "x", "--task", "CB"]).experiment_dir == "x"
    with pytest.raises(UserError, match=r"ambiguous option: --t could match --train_sample_fraction, --target_modules, --tasks"):
        config.training_config(["--t", "CB"])


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "cb"], "unknown task 'cb' (did you mean 'CB'?)"),
    (["--tasks", "boolq,CB"], "tasks are separate words"),
    (["--tasks", "CB", "--target_modules", "q_proj,v_proj"], "space-separated: --target_modules q_proj v_proj"),
    (["--tasks", "CB", "--dry_run", "fsdp:1"], "fsdp:N with N >= 2"),
])
def test_mistyped_values_say_what_to_type(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config.training_config(argv).check()
