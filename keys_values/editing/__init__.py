"""Knowledge editing of one layer's keys or values: the flags (config), the edit requests (records), the plan of a
command (plan: a run per seed, layer and arm), the edits themselves (editor, with stack: the decoder from one layer
up, and delta: a change per edit of a batch), ROME's and EasyEdit's metrics (metrics), one run's work (run) and the
comparison of the arms (report). docs/knowledge-editing.md says what each measures."""
