use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: s(&["/entry"]),
        cmd: s(&["serve", "--port=80"]),
        env: s(&["PATH=/bin", "MODE=image", "EMPTY"]),
        ..ImageConfig::default()
    }
}

#[test]
fn command_and_args_follow_kubernetes_rules() -> Result<(), SpecError> {
    let img = image();
    let env = vec![("PORT".to_owned(), "8080".to_owned())];
    let run = |command: &[&str], args: &[&str]| {
        resolve_process("c", &img, &s(command), &s(args), &env, None).map(|p| p.args)
    };
    assert_eq!(run(&[], &[])?, s(&["/entry", "serve", "--port=80"]));
    assert_eq!(run(&[], &["x", "$(PORT)"])?, s(&["/entry", "x", "8080"]));
    assert_eq!(run(&["sh", "-c"], &[])?, s(&["sh", "-c"]));
    assert_eq!(
        run(&["echo", "$(PORT)", "$$(PORT)", "$(NOPE)"], &["y"])?,
        s(&["echo", "8080", "$(PORT)", "$(NOPE)", "y"])
    );
    let err = resolve_process("web", &ImageConfig::default(), &[], &[], &[], None)
        .expect_err("no command");
    assert!(err.to_string().contains("\"web\""), "{err}");
    Ok(())
}

#[test]
fn container_env_overrides_image_env() -> Result<(), SpecError> {
    let env = vec![
        ("MODE".to_owned(), "pod".to_owned()),
        ("NEW".to_owned(), "1".to_owned()),
    ];
    let p = resolve_process("c", &image(), &[], &[], &env, Some("web-0"))?;
    assert_eq!(
        p.env,
        s(&["HOSTNAME=web-0", "PATH=/bin", "MODE=pod", "EMPTY=", "NEW=1"])
    );
    let p = resolve_process("c", &ImageConfig::default(), &s(&["true"]), &[], &[], None)?;
    assert_eq!(p.env, s(&[DEFAULT_PATH_ENV]));
    Ok(())
}

#[test]
fn kubelet_cpu_and_memory_mapping() {
    let r = Resources::from_kubernetes(Some(250), Some(500), Some(64 << 20));
    assert_eq!(r.cpu_shares, Some(256));
    assert_eq!(r.cpu_quota, Some(50_000));
    assert_eq!(r.cpu_period, Some(100_000));
    assert_eq!(r.memory_limit, Some(64 << 20));
    let r = Resources::from_kubernetes(None, Some(1), None);
    assert_eq!((r.cpu_shares, r.cpu_quota), (Some(2), Some(1000)));
    assert_eq!(r.memory_limit, None);
}
