# reliant.audit.clean: the audit installs nothing and writes nothing, so there is
# nothing to undo.
reliant-audit-clean-nothing:
  test.succeed_without_changes:
    - name: reliant.audit installs nothing
