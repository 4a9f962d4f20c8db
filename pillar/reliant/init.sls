# Pillar of reliant-formula, installed by its package; your edits survive updates.
# Every key is optional: a missing key takes its default. The formula's pillar.example
# (/srv/formulas/base/reliant-formula/pillar.example) lists each key with its default
# and what it does: copy the ones you change under `reliant:` below.
reliant: {}
