//! The fact table of docs/agent.md lists exactly the facts of the schema,
//! with their types, so the docs cannot drift from what agents report.

use cms_roles::{FACTS, FactType};

#[test]
fn the_docs_fact_table_lists_every_fact_of_the_schema_and_no_other() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md"))
        .expect("docs/agent.md");
    let section = docs
        .split("### The facts")
        .nth(1)
        .expect("docs/agent.md has a section `### The facts`");
    let rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|line| !line.starts_with("| fact |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string())
        })
        .collect();
    let documented: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    let schema: Vec<&str> = FACTS.iter().map(|fact| fact.name).collect();
    assert_eq!(
        documented, schema,
        "the table's facts, in the schema's order"
    );
    for ((name, kind), fact) in rows.iter().zip(FACTS) {
        let expected = match fact.kind {
            FactType::String => "string",
            FactType::Integer => "integer",
            FactType::StringList => "list of strings",
            FactType::Object => "object",
        };
        assert_eq!(kind, expected, "the type of `{name}`");
    }
}
