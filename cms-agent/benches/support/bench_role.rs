//! The benchmark role of the agent's runs: 200 files rendered from one
//! template with per-file `vars`, 50 static files, 20 symlinks, 5
//! directories and 5 packages every Debian system has. Shared by the
//! masterless benchmark (`cargo bench -p cms-agent --bench converge`) and
//! the server-mode one (`cargo bench -p cms-integration --bench
//! periodic_run`), which include this file by path.

use std::path::Path;

pub const PACKAGES: [&str; 5] = ["bash", "coreutils", "dpkg", "tar", "gzip"];

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

pub fn build_repository(repo: &Path, target: &Path) {
    write(
        &repo.join("cms.toml"),
        "[hierarchy]\nlayers = [\"common\"]\n",
    );
    write(
        &repo.join("data/common.toml"),
        "port = 8080\n[db]\nhost = \"db.internal\"\npool = 10\n",
    );
    write(
        &repo.join("templates/app.conf.hbs"),
        "# Managed by cms\nname={{vars.name}}\nhost={{fact.hostname}}\nport={{data.port}}\ndb={{data.db.host}}:{{data.db.pool}}\nheap=-Xmx{{memory_percent 50}}\n",
    );
    write(
        &repo.join("files/static.txt"),
        &"static line of text\n".repeat(20),
    );
    let t = target.display();
    let mut role = String::new();
    for package in PACKAGES {
        role.push_str(&format!("[[package]]\nname = \"{package}\"\n\n"));
    }
    for d in 0..5 {
        role.push_str(&format!(
            "[[directory]]\npath = \"{t}/d{d}\"\nmode = \"0755\"\n\n"
        ));
    }
    for f in 0..200 {
        role.push_str(&format!(
            "[[file]]\npath = \"{t}/d{}/app-{f}.conf\"\ntemplate = \"app.conf.hbs\"\nvars = {{ name = \"app-{f}\" }}\nmode = \"0640\"\n\n",
            f % 5
        ));
    }
    for f in 0..50 {
        role.push_str(&format!("[[file]]\npath = \"{t}/d{}/static-{f}.txt\"\nsource = \"static.txt\"\nmode = \"0644\"\n\n", f % 5));
    }
    for l in 0..20 {
        role.push_str(&format!(
            "[[symlink]]\npath = \"{t}/d{}/link-{l}\"\ntarget = \"app-{l}.conf\"\n\n",
            l % 5
        ));
    }
    write(&repo.join("roles/bench.toml"), &role);
}
