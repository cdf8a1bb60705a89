"""The experiment folder, with one owner: its names and layout (layout), what state it is in and what it is when
it is not an experiment (state), who is writing to it (lock), the checkpoints a resumed run continues from
(checkpoints), and the records it holds, the original code's included (records). Every reader and writer asks
these modules; no other spells a file name of the folder."""
