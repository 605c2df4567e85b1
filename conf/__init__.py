# Hydra config package (installed as `mmxattn.conf`). Groups: encoder/ decoder/ data/ tokenizer/ optim/
# trainer/ eval/, and recipe/ (a link to the repository's recipes/ folder).
