"""Keys or values? The code behind the scripts at the top of the repository: LoRA on a transformer's
feed-forward keys or values (training, evaluation, the study, its report) and knowledge editing of one layer's
keys or values. docs/design.md shows its floors and rooms; nothing here runs on import."""
