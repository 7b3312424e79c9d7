use super::*;

#[test]
fn each_content_type_maps_to_its_patch_type() {
    for (ct, ty) in [
        ("application/json-patch+json", PatchType::Json),
        ("application/merge-patch+json", PatchType::Merge),
        (
            "application/strategic-merge-patch+json",
            PatchType::StrategicMerge,
        ),
        ("application/apply-patch+yaml", PatchType::Apply),
    ] {
        assert_eq!(PatchType::from_content_type(ct).ok(), Some(ty), "{ct}");
        assert_eq!(ty.content_type(), ct);
    }
}

#[test]
fn parameters_and_case_are_ignored() {
    assert_eq!(
        PatchType::from_content_type("Application/Merge-Patch+JSON; charset=utf-8").ok(),
        Some(PatchType::Merge)
    );
    assert_eq!(
        PatchType::from_content_type(" application/apply-patch+yaml ;").ok(),
        Some(PatchType::Apply)
    );
}

#[test]
fn unknown_content_types_are_415_naming_the_type() {
    for ct in ["application/json", "", "text/plain", "application/yaml"] {
        let err = PatchType::from_content_type(ct).err();
        let Some(err) = err else {
            panic!("{ct:?} was accepted");
        };
        assert_eq!(err.http_status(), 415);
        assert!(
            err.to_string()
                .starts_with(&format!("unsupported patch content type {ct:?}")),
            "{err}"
        );
    }
}
