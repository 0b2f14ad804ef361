"""Detection rules: YAML files, compiled once to Python closures, evaluated on every record.

    parser.py     YAML to items that know their file and line
    condition.py  condition text to a syntax tree, with columns
    fields.py     the field names rules may use (the one table), with accessors
    compiler.py   syntax trees to closures; guards for the engine's index
    loader.py     files, lists, macros, rules, overrides, examples
    engine.py     single-event rules, sequences, thresholds
    alerts.py     alert records and their messages
"""

from .engine import Engine
from .loader import RuleSet, default_rules_dir, load, load_text, run_examples
from .parser import RulesError

__all__ = ["Engine", "RuleSet", "RulesError", "default_rules_dir", "load", "load_text", "run_examples"]
