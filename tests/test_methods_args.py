"""Method arguments are declared with the same rules as run settings (``methods/args.py``): every field of every
method's ``Args`` names its rule, and the one check converts and refuses by it (issue 24)."""

import dataclasses

import pytest

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.args import arg_of


def test_every_method_argument_is_declared_with_a_rule():
    undeclared = [f"{name}.{f.name}" for name in METHODS.names() if name != "peft"  # PEFT's config class checks
                  for f in dataclasses.fields(METHODS.get(name).Args) if arg_of(f) is None]
    assert not undeclared, f"method arguments without a rule (declare them with arg()): {undeclared}"


@pytest.mark.parametrize("name,args,message", [
    # a flag that is not true or false was taken as it came (2, "maybe") and entered the run key so
    ("hra", {"apply_gs": 2}, "method 'hra': apply_gs must be true or false, got 2."),
    ("compacter", {"layer_norm": 0}, "method 'compacter': layer_norm must be true or false, got 0."),
    ("randlora", {"sparse": 1}, "method 'randlora': sparse must be true or false, got 1."),
    # a seed torch cannot take was refused only by PEFT, after the model loaded
    ("fourierft", {"random_loc_seed": -1},
     "method 'fourierft': random_loc_seed must be an integer in [0, 4294967295], got -1."),
])
def test_an_argument_outside_its_rule_is_one_line(name, args, message):
    with pytest.raises(ConfigError) as e:
        METHODS.get(name).from_config(args)
    assert str(e.value) == message


def test_arguments_take_their_canonical_form_as_run_settings_do():
    """A name is case-folded and a number from the command line converted, so equal runs share a key."""
    assert METHODS.get("corda").from_config({"mode": "KPM", "rank": "4"}).args_dict()["mode"] == "kpm"
    assert METHODS.get("lora").from_config({"rank": "4", "alpha": 8}).args_dict() == {
        "rank": 4, "alpha": 8.0, "dropout": 0.0}
    assert METHODS.get("eva").from_config({"whiten": "yes"}).args.whiten is True
