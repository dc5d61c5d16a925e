//! The stock clients the client tests run: Python grpcio and Node grpc-js (pinned, under
//! the target directory) and Debian's Go with grpc-go.

use super::*;

/// Where the stock gRPC clients the tests run are installed, under the target directory
/// (`tests/src/lib.rs`, `client_tools`, finds them there).
pub(super) const CLIENT_TOOLS: &str = "client-tools";

/// The Python packages of the client tests, pinned (no lockfile in the repo).
pub(super) const PYTHON_PACKAGES: [(&str, &str); 2] =
    [("grpcio", "1.85.1"), ("grpcio-tools", "1.85.1")];

/// The npm packages of the client tests, pinned (no package-lock.json in the repo).
pub(super) const NODE_PACKAGES: [(&str, &str); 2] =
    [("@grpc/grpc-js", "1.14.7"), ("@grpc/proto-loader", "0.8.1")];

/// Debian's packages for the Go client tests (`clients/go`, built in GOPATH mode from
/// `/usr/share/gocode`: there is no Go module proxy). `golang-github-golang-protobuf-1-5-dev`
/// must come with grpc-go: alone, apt satisfies grpc-go with the 1-3 package, which builds but
/// panics on proto3 `optional` fields. The protoc plugins are for `clients/go/generate.sh`.
pub(super) const GO_PACKAGES: [&str; 6] = [
    "golang-go",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
];

/// A virtualenv at `TOOLS/python` with [`PYTHON_PACKAGES`], for the grpcio client tests.
pub(super) fn python_client(apt: &mut Apt, tools: &Path) -> Result<()> {
    let venv = tools.join("python");
    let python = venv.join("bin/python");
    let wanted = PYTHON_PACKAGES.map(|(name, version)| format!("{name}=={version}"));
    let installed = output(Command::new(&python).args(["-m", "pip", "freeze"]));
    if let Ok(frozen) = &installed
        && wanted.iter().all(|w| frozen.lines().any(|l| l == w))
    {
        say(format!(
            "{} present in {}",
            wanted.join(", "),
            venv.display()
        ));
        return Ok(());
    }
    if !python.exists() {
        if !matches!(
            probe("python3", &["-c", "import venv, ensurepip"]),
            Probe::Works(_)
        ) {
            say("python3 with venv not found");
            apt.install(&["python3", "python3-venv"])?;
        }
        let mut create = Command::new("python3");
        create.arg("-m").arg("venv").arg(&venv);
        say(format!(
            "creating a Python virtualenv ({})…",
            util::display(&create)
        ));
        util::run(&mut create)?;
    }
    let mut install = Command::new(&python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&wanted);
    install_packages(&wanted, &mut install)
}

/// Says what `install` installs, then runs it.
pub(super) fn install_packages(wanted: &[String], install: &mut Command) -> Result<()> {
    say(format!(
        "installing {} ({})…",
        wanted.join(", "),
        util::display(install)
    ));
    util::run(install)
}

/// `TOOLS/node/node_modules` with [`NODE_PACKAGES`], for the grpc-js client tests; no
/// package.json or lockfile is written.
pub(super) fn node_client(apt: &mut Apt, tools: &Path) -> Result<()> {
    let prefix = tools.join("node");
    let present = NODE_PACKAGES.iter().all(|(name, version)| {
        let manifest = prefix.join("node_modules").join(name).join("package.json");
        fs::read_to_string(manifest)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|json| json["version"] == *version)
    });
    let wanted = NODE_PACKAGES.map(|(name, version)| format!("{name}@{version}"));
    if present {
        say(format!(
            "{} present in {}",
            wanted.join(", "),
            prefix.display()
        ));
        return Ok(());
    }
    if !matches!(probe("npm", &["--version"]), Probe::Works(_)) {
        say("node and npm not found");
        apt.install(&["nodejs", "npm"])?;
    }
    fs::create_dir_all(&prefix).with_context(|| format!("cannot create {}", prefix.display()))?;
    let mut install = Command::new("npm");
    install
        .arg("install")
        .arg("--prefix")
        .arg(&prefix)
        .args([
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .args(&wanted);
    install_packages(&wanted, &mut install)
}

/// Debian's Go, grpc-go, protobuf and protoc plugins ([`GO_PACKAGES`]), for the Go client tests.
/// Installed packages are told by dpkg (the 1-3 and 1-5 golang/protobuf packages ship the same
/// paths, so files alone cannot tell them apart).
pub(super) fn go_client(apt: &mut Apt) -> Result<()> {
    let installed = |package: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_ok_and(|status| status == "install ok installed")
    };
    let missing: Vec<&str> = GO_PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        let version = output(Command::new("go").arg("version"))?;
        say(format!(
            "{version} with Debian's grpc-go and protoc plugins present"
        ));
        return Ok(());
    }
    say(format!(
        "Go client packages missing: {}",
        missing.join(", ")
    ));
    apt.install(&missing)?;
    match probe("go", &["version"]) {
        Probe::Works(version) => say(format!("{version} installed")),
        Probe::NotFound => bail!("go is still not on PATH after installing golang-go"),
        Probe::Fails(why) => bail!("go was installed but `go version` fails: {why}"),
    }
    require_tool("protoc-gen-go")?;
    require_tool("protoc-gen-go-grpc")
}
