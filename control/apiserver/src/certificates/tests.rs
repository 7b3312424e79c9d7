use super::*;

#[test]
fn the_requester_is_stamped_over_what_the_client_wrote() -> Result<(), ApiError> {
    let user = User {
        name: "system:bootstrap:abcdef".into(),
        groups: vec!["system:bootstrappers".into()],
    };
    let body = json!({"spec": {"username": "admin", "groups": ["system:masters"], "uid": "x"}, "status": {"certificate": "Zm9v"}});
    let out: Value = serde_json::from_slice(&stamp_requester(body, &user)?)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    assert_eq!(out["spec"]["username"], "system:bootstrap:abcdef");
    assert_eq!(
        out["spec"]["groups"],
        json!(["system:bootstrappers", "system:authenticated"])
    );
    assert!(out["spec"].get("uid").is_none() && out.get("status").is_none());
    Ok(())
}

#[test]
fn approval_keeps_everything_but_the_conditions_and_cannot_be_taken_back() {
    let old = json!({"metadata": {"name": "n"}, "spec": {"signerName": "s"}, "status": {"certificate": "Y2VydA=="}});
    let new = json!({"spec": {"signerName": "evil"}, "status": {"certificate": "", "conditions": [{"type": "Approved", "reason": "KubectlApprove"}]}});
    let mut obj = approval_update(&old, &new);
    assert_eq!(obj["spec"]["signerName"], "s");
    assert_eq!(obj["status"]["certificate"], "Y2VydA==");
    assert!(admit(&mut obj, Some(&old)).is_ok());
    let cond = &obj["status"]["conditions"][0];
    assert_eq!(cond["status"], "True");
    assert!(cond["lastUpdateTime"].is_string() && cond["lastTransitionTime"].is_string());

    let mut denied = approval_update(
        &obj,
        &json!({"status": {"conditions": [{"type": "Denied"}]}}),
    );
    let err = admit(&mut denied, Some(&obj)).err().map(|e| e.message);
    assert!(
        err.as_deref()
            .is_some_and(|m| m.contains("updates may not remove a condition of type \"Approved\"")),
        "{err:?}"
    );
    let mut both = approval_update(
        &old,
        &json!({"status": {"conditions": [{"type": "Approved"}, {"type": "Denied"}]}}),
    );
    assert!(admit(&mut both, Some(&old)).is_err());
}

#[test]
fn a_request_that_is_not_a_csr_is_invalid_naming_the_field() {
    let mut obj = json!({"metadata": {"name": "n"}, "spec": {"request": "bm90IGEgY3Ny", "signerName": "kubernetes.io/kube-apiserver-client-kubelet"}});
    let err = admit(&mut obj, None).err().map(|e| (e.code, e.message));
    let Some((code, message)) = err else {
        panic!("accepted a request that is no CSR");
    };
    assert_eq!(code, 422);
    assert!(message.contains("spec.request: Invalid value"), "{message}");
    assert!(message.contains("spec.usages: Required value"), "{message}");
}

#[test]
fn a_node_may_ask_for_its_own_client_certificate_only() -> Result<(), ApiError> {
    let csr = |node: &str| -> Result<Value, ApiError> {
        let req =
            shoal_ca::NodeRequest::generate(node).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(json!({"spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(req.csr_pem),
            "signerName": shoal_ca::KUBELET_CLIENT_SIGNER,
            "usages": ["client auth"],
        }}))
    };
    let node_a = User {
        name: "system:node:node-a".into(),
        groups: vec![shoal_ca::NODES_GROUP.into()],
    };
    stamp_requester(csr("node-a")?, &node_a)?;
    let err = stamp_requester(csr("node-b")?, &node_a)
        .err()
        .ok_or_else(|| ApiError::internal("node-a got node-b's request through"))?;
    assert_eq!(err.code, 403);
    assert!(
        err.message.contains("\"system:node:node-a\"")
            && err.message.contains("\"system:node:node-b\""),
        "{}",
        err.message
    );
    // A bootstrap token joins a node of any name.
    let token = User {
        name: "system:bootstrap:abcdef".into(),
        groups: vec![shoal_ca::BOOTSTRAPPERS_GROUP.into()],
    };
    stamp_requester(csr("node-b")?, &token)?;
    Ok(())
}
