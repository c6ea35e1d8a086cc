"""tools/_table.py: the exact qvm-ls layout of TOOLS.md §3.4."""
from qubes.tools._table import format_table

SPEC_EXAMPLE = """\
-------------------+----+---------+-------+-------+---------------+-------------+--------+
              name | on |   state | updbl |  type |      template |       netvm |  label |
-------------------+----+---------+-------+-------+---------------+-------------+--------+
            {dom0} |  * | Running |   Yes | Admin |          None |         n/a |  black |
           {netvm} |  * | Running |       |   Net | fedora-20-x64 |         n/a |    red |
      {firewallvm} |  * | Running |       | Proxy | fedora-20-x64 |       netvm |  green |
 =>[fedora-20-x64] |    |  Halted |   Yes |   Tpl |           n/a | *firewallvm |  black |
              work |  * | Running |       |       | fedora-20-x64 | *firewallvm |   blue |"""


def test_spec_example_reproduced():
    """The example's `label` column is one wider than its five rows need: it was
    cut from a longer listing. With one more row labelled `yellow` the rule
    w = max(len(header), len(cells)) gives exactly the example's lines."""
    headers = ["name", "on", "state", "updbl", "type", "template", "netvm", "label"]
    rows = [
        ["{dom0}", "*", "Running", "Yes", "Admin", "None", "n/a", "black"],
        ["{netvm}", "*", "Running", "", "Net", "fedora-20-x64", "n/a", "red"],
        ["{firewallvm}", "*", "Running", "", "Proxy", "fedora-20-x64", "netvm", "green"],
        ["=>[fedora-20-x64]", "", "Halted", "Yes", "Tpl", "n/a", "*firewallvm", "black"],
        ["work", "*", "Running", "", "", "fedora-20-x64", "*firewallvm", "blue"],
        ["personal", "", "Halted", "", "", "fedora-20-x64", "*firewallvm", "yellow"],
    ]
    lines = format_table(headers, rows)
    assert "\n".join(lines[:-1]) == SPEC_EXAMPLE
    assert lines[-1] == ("          personal |    |  Halted |       |       | fedora-20-x64 "
                         "| *firewallvm | yellow |")


def test_header_wider_than_cells_and_no_rows():
    assert format_table(["long header", "x"], []) == [
        "-------------+---+",
        " long header | x |",
        "-------------+---+",
    ]


def test_no_trailing_spaces():
    lines = format_table(["a", "b"], [["", ""], ["xyz", ""]])
    assert all(line.endswith("|") or line.endswith("+") for line in lines)
    assert all(line == line.rstrip() for line in lines)
