//! The REST verbs on resources: get, list, watch, create, update, patch,
//! delete and deletecollection, with their subresources (`status`,
//! `scale`, `binding`, `eviction`), the object metadata rules (uid, generation,
//! resourceVersion, deletion with finalizers) and the list/watch encodings.

use std::{sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use shoal_api::Kind;
use tokio::sync::mpsc;

use crate::{
    body::Reply,
    request::{Query, ResourceRequest, Verb},
    selector::Filter,
    status::ApiError,
    storage::{Claims, Storage, Stored, Written},
    watch_cache::{Change, Entry, Event, WatchCache, WatchFrom},
};

mod eviction;

/// How long a watch lasts when the client sets no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// Retries of a patch whose target changed under it.
const PATCH_RETRIES: usize = 5;

/// How many times a write is admitted again after another apiserver
/// claimed an address or port it picked first.
const CLAIM_RETRIES: usize = 16;
/// The annotation marking the end of a watch's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Everything a REST handler needs.
pub struct Resources {
    /// The store.
    pub storage: Storage,
    /// Lists and watches from memory.
    pub cache: Arc<WatchCache>,
    /// Changes every object passes through before it is written.
    pub admission: Arc<dyn Admission>,
}

/// Defaulting, admission and validation of an object about to be written.
pub trait Admission: Send + Sync {
    /// The steps of admission on create that may look objects up in the
    /// store (Kubernetes' ServiceAccount plugin); they run after the
    /// namespace is found and before [`Admission::admit`].
    fn admit_create<'a>(
        &'a self,
        _kind: &'static Kind,
        _obj: &'a mut Value,
    ) -> futures_util::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Fills defaults, allocates what admission owns, and validates; `old`
    /// is the live object on update. Errors are 422s naming the field.
    fn admit(
        &self,
        kind: &'static Kind,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError>;

    /// Keys held in the store for what admission allocated: writing `new`
    /// over `old` (None: a create; `new` None: a deletion) claims and
    /// releases them in the same transaction.
    fn claims(&self, _kind: &'static Kind, _new: Option<&Value>, _old: Option<&Value>) -> Claims {
        Claims::default()
    }

    /// A write failed because another writer holds `key`, which
    /// [`Admission::claims`] named: admission avoids it on the next try.
    fn claim_lost(&self, _key: &str) {}
}

/// A request body with its content type.
pub struct Body<'a> {
    /// `Content-Type`.
    pub content_type: &'a str,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// How the client wants objects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain JSON objects and lists.
    Json,
    /// `meta.k8s.io/v1` Table.
    Table,
}

impl Resources {
    /// Serves one resource request.
    pub async fn handle(
        &self,
        req: &ResourceRequest,
        query: &Query,
        body: Body<'_>,
        format: Format,
    ) -> Result<Reply, ApiError> {
        let kind =
            shoal_api::find_resource(&req.group, &req.version, &req.resource).ok_or_else(|| {
                ApiError::no_route(&format!("{}/{}/{}", req.group, req.version, req.resource))
            })?;
        let ns = match (kind.namespaced(), &req.namespace) {
            (true, ns) => ns.clone(),
            (false, Some(_)) => {
                return Err(ApiError::no_route(&format!(
                    "namespaces/{{ns}}/{}",
                    kind.plural
                )));
            }
            (false, None) => None,
        };
        if kind.namespaced() && req.name.is_some() && ns.is_none() {
            return Err(ApiError::bad_request(format!(
                "{} is namespaced: name it under /namespaces/<namespace>/{}",
                kind.plural, kind.plural
            )));
        }
        if let Some(sub) = &req.subresource
            && !kind.has_subresource(sub)
        {
            return Err(ApiError::no_route(&format!("{}/{sub}", kind.plural)));
        }
        let sub = req.subresource.as_deref();
        match (req.verb, req.name.as_deref(), sub) {
            (Verb::List, _, _) => self.list(kind, ns.as_deref(), query, format).await,
            (Verb::Watch, _, _) => self.watch(kind, ns.as_deref(), query),
            (Verb::Create, None, None) => {
                if kind.namespaced() && ns.is_none() {
                    return Err(ApiError::bad_request(format!(
                        "{} must be created in a namespace: POST to /namespaces/<namespace>/{}",
                        kind.plural, kind.plural
                    )));
                }
                self.create(kind, ns.as_deref(), body, query).await
            }
            (Verb::Get, Some(name), None) => {
                let key = object_key(kind, ns.as_deref(), name);
                let stored = self.get_stored(kind, &key, name).await?;
                render_one(kind, stored.value, format)
            }
            (Verb::Get, Some(name), Some("status" | "approval" | "ephemeralcontainers")) => {
                let key = object_key(kind, ns.as_deref(), name);
                Ok(Reply::json(
                    200,
                    &self.get_stored(kind, &key, name).await?.value,
                ))
            }
            (Verb::Get, Some(name), Some("scale")) => {
                let key = object_key(kind, ns.as_deref(), name);
                Ok(Reply::json(
                    200,
                    &scale_of(kind, &self.get_stored(kind, &key, name).await?.value),
                ))
            }
            (
                Verb::Update,
                Some(name),
                sub @ (None
                | Some("status" | "scale" | "finalize" | "approval" | "ephemeralcontainers")),
            ) => {
                let obj = decode_body(&body)?;
                self.update(kind, ns.as_deref(), name, obj, sub, query)
                    .await
            }
            (
                Verb::Patch,
                Some(name),
                sub @ (None | Some("status" | "scale" | "approval" | "ephemeralcontainers")),
            ) => {
                self.patch(kind, ns.as_deref(), name, body, sub, query)
                    .await
            }
            (Verb::Create, Some(name), Some("binding")) => {
                self.bind(kind, ns.as_deref(), name, body).await
            }
            (Verb::Create, Some(name), Some("eviction")) => {
                self.evict(kind, ns.as_deref(), name, body).await
            }
            (Verb::Create, None, Some(_)) => {
                Err(ApiError::method_not_supported(kind.plural, "create"))
            }
            (Verb::Delete, Some(name), None) => {
                let opts = delete_options(&body, query)?;
                let key = object_key(kind, ns.as_deref(), name);
                let (obj, _) = self.delete(kind, &key, name, &opts).await?;
                Ok(Reply::json(200, &obj))
            }
            (Verb::DeleteCollection, None, None) => {
                self.delete_collection(kind, ns.as_deref(), &body, query)
                    .await
            }
            (verb, _, sub) => Err(ApiError::method_not_supported(
                &match sub {
                    Some(s) => format!("{}/{s}", kind.plural),
                    None => kind.plural.to_string(),
                },
                verb.as_str(),
            )),
        }
    }

    async fn get_stored(&self, kind: &Kind, key: &str, name: &str) -> Result<Stored, ApiError> {
        self.storage
            .get(key)
            .await?
            .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))
    }

    async fn list(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        query: &Query,
        format: Format,
    ) -> Result<Reply, ApiError> {
        let filter = Filter::of(query, kind.plural)?;
        let prefix = collection_prefix(kind, ns);
        let from_cache =
            query.resource_version.as_deref() == Some("0") && query.continue_token.is_none();
        let (items, rev, cont, remaining) = if let Some((entries, rev)) = from_cache
            .then(|| self.cache.get(kind).and_then(|c| c.list(&prefix)))
            .flatten()
        {
            let items = entries
                .into_iter()
                .filter(|e| filter.matches(&e.value))
                .map(ListItem::Cached)
                .collect();
            (items, rev, None, None)
        } else {
            self.list_from_store(&prefix, &filter, query).await?
        };
        let mut meta = Map::new();
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
        if let Some(c) = cont {
            meta.insert("continue".into(), json!(c));
        }
        if let Some(r) = remaining.filter(|r| *r > 0) {
            meta.insert("remainingItemCount".into(), json!(r));
        }
        match format {
            Format::Table => {
                let objects: Vec<Value> = items.into_iter().map(ListItem::into_value).collect();
                Ok(Reply::table(table(
                    kind,
                    &objects,
                    Value::Object(meta),
                    query,
                )))
            }
            Format::Json => {
                let mut out =
                    BytesMut::with_capacity(256 + items.iter().map(ListItem::len).sum::<usize>());
                out.put_slice(
                    format!(
                        "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                        kind.list_kind(),
                        kind.api_version(),
                        Value::Object(meta)
                    )
                    .as_bytes(),
                );
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    item.write(&mut out);
                }
                out.put_slice(b"]}");
                Ok(Reply::raw(200, out.freeze()))
            }
        }
    }

    /// A consistent list from the store, paged with `limit`/`continue`.
    async fn list_from_store(
        &self,
        prefix: &str,
        filter: &Filter,
        query: &Query,
    ) -> Result<(Vec<ListItem>, i64, Option<String>, Option<i64>), ApiError> {
        let (mut start, mut rev) = match &query.continue_token {
            Some(token) => {
                let (rev, start) = decode_continue(token)?;
                (Some(format!("{prefix}{start}")), rev)
            }
            None => (None, exact_revision(query)?),
        };
        let limit = query.limit;
        let mut items = Vec::new();
        loop {
            let want = limit.map(|l| l - items.len() as i64 + 1);
            let page = match self.storage.list(prefix, start.as_deref(), rev, want).await {
                Ok(page) => page,
                // Kubernetes' words for a token whose revision was compacted.
                Err(e) => match ApiError::from(e) {
                    e if e.code == 410 && query.continue_token.is_some() => {
                        return Err(ApiError::gone(CONTINUE_EXPIRED));
                    }
                    e => return Err(e),
                },
            };
            rev = page.rev;
            let n = page.items.len();
            let mut last_key = None;
            for (key, stored) in page.items {
                if limit.is_some_and(|l| items.len() as i64 >= l) {
                    // One more than asked: there is a next page from here.
                    let token = encode_continue(rev, key.strip_prefix(prefix).unwrap_or(&key));
                    return Ok((items, rev, Some(token), Some(page.remaining + 1)));
                }
                if filter.matches(&stored.value) {
                    items.push(ListItem::Stored(stored.value));
                }
                last_key = Some(key);
            }
            match (page.more, last_key) {
                (true, Some(k)) if n > 0 => {
                    let mut next = k.into_bytes();
                    next.push(0);
                    start = Some(String::from_utf8_lossy(&next).into_owned());
                }
                _ => return Ok((items, rev, None, None)),
            }
        }
    }

    fn watch(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let filter = Filter::of(query, kind.plural)?;
        let cache = self
            .cache
            .get(kind)
            .ok_or_else(|| ApiError::internal(format!("no watch cache for {}", kind.plural)))?
            .clone();
        let from = match query.resource_version.as_deref() {
            None | Some("0") => None,
            Some(rv) => Some(parse_rv(rv)?),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let prefix = collection_prefix(kind, ns);
        let timeout = query.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let bookmarks = query.allow_bookmarks;
        let initial_end = from.is_none() && query.send_initial_events == Some(true);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut sub = {
                let mut waited = 0;
                loop {
                    match cache.subscribe(from) {
                        Ok(sub) => break sub,
                        Err(WatchFrom::NotReady) if waited < 100 => {
                            waited += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(WatchFrom::NotReady) => {
                            let e = ApiError::timeout(format!(
                                "the watch cache for {} is not ready",
                                kind.plural
                            ));
                            let _ = tx.send(error_event(&e)).await;
                            return;
                        }
                        Err(WatchFrom::TooOld { oldest }) => {
                            let e = ApiError::gone(format!(
                                "too old resource version: {} ({oldest})",
                                from.unwrap_or(0)
                            ));
                            let _ = tx.send(error_event(&e)).await;
                            return;
                        }
                    }
                }
            };
            let mut sent = sub.rev;
            for e in &sub.backlog {
                if let Some(frame) = frame_for(e, &prefix, &filter)
                    && tx.send(frame).await.is_err()
                {
                    return;
                }
                sent = sent.max(e.rev);
            }
            if initial_end {
                let _ = tx.send(bookmark(kind, sent, true)).await;
            }
            let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks => {
                        let rev = (*sub.progress.borrow()).max(sent);
                        if tx.send(bookmark(kind, rev, false)).await.is_err() {
                            return;
                        }
                    }
                    ev = sub.live.recv() => match ev {
                        Ok(e) if e.rev <= sent => {}
                        Ok(e) => {
                            sent = e.rev;
                            if let Some(frame) = frame_for(&e, &prefix, &filter)
                                && tx.send(frame).await.is_err()
                            {
                                return;
                            }
                        }
                        // Too slow to keep up: end the watch; the client
                        // resumes from the last revision it saw.
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Reply::stream(rx))
    }

    async fn create(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        body: Body<'_>,
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let mut obj = decode_body(&body)?;
        check_type(kind, &mut obj)?;
        check_fields(kind, &obj, query)?;
        let meta = metadata_mut(&mut obj)?;
        match (ns, meta.get("namespace").and_then(Value::as_str)) {
            (Some(url), Some(body)) if !body.is_empty() && body != url => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(url), _) => {
                meta.insert("namespace".into(), json!(url));
            }
            (None, _) => {
                meta.remove("namespace");
            }
        }
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(g) => {
                    let n = format!("{g}{}", random_suffix());
                    meta.insert("name".into(), json!(n));
                    n
                }
                None => {
                    return Err(ApiError::invalid(
                        kind.group,
                        kind.kind,
                        "",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            kind.kind
                        ),
                        vec![
                            json!({"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}),
                        ],
                    ));
                }
            },
        };
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(field);
        }
        prepare_create(kind, &mut obj);
        shoal_api::prepare_for_create(kind, &mut obj);
        // Namespace lifecycle first, as Kubernetes' admission orders it.
        if let Some(ns) = ns {
            self.check_namespace(ns).await?;
        }
        self.admission.admit_create(kind, &mut obj).await?;
        let key = object_key(kind, ns, &name);
        let unadmitted = obj;
        for _ in 0..CLAIM_RETRIES {
            let mut obj = unadmitted.clone();
            self.admission.admit(kind, &mut obj, None)?;
            if query.dry_run {
                return Ok(Reply::json(201, &obj));
            }
            let claims = self.admission.claims(kind, Some(&obj), None);
            match self.storage.create_claiming(&key, &obj, &claims).await? {
                Written::Ok(rev) => {
                    set_rv(&mut obj, rev);
                    return Ok(Reply::json(201, &obj));
                }
                Written::Rejected(_) => {
                    return Err(ApiError::already_exists(kind.group, kind.plural, &name));
                }
                Written::Taken(claimed) => self.admission.claim_lost(&claimed),
            }
        }
        Err(claims_exhausted(kind, &name))
    }

    /// Refuses new objects in a namespace that is missing or terminating.
    async fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let key = format!("/registry/namespaces/{ns}");
        let Some(stored) = self.storage.get(&key).await? else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        if stored
            .value
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    async fn update(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        sub: Option<&str>,
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let key = object_key(kind, ns, name);
        if sub != Some("scale") {
            check_type(kind, &mut obj)?;
            check_fields(kind, &obj, query)?;
        }
        // Without a resourceVersion the client asked for no precondition:
        // a write that loses a race is redone on the newer object, as the
        // apiserver's GuaranteedUpdate does, instead of a 409.
        let unconditional = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        let mut attempts = 0;
        let (mut obj, rev) = loop {
            let current = self.get_stored(kind, &key, name).await?;
            let body = if sub == Some("scale") {
                apply_scale(&current.value, &obj)?
            } else {
                obj.clone()
            };
            match self
                .write_update(kind, ns, name, &key, current, body, sub, query)
                .await
            {
                Err(e) if unconditional && e.code == 409 && attempts < UNCONDITIONAL_RETRIES => {
                    attempts += 1;
                }
                written => break written?,
            }
        };
        if rev > 0 {
            set_rv(&mut obj, rev);
        }
        if sub == Some("scale") {
            return Ok(Reply::json(200, &scale_of(kind, &obj)));
        }
        Ok(Reply::json(200, &obj))
    }

    /// The update rules shared by PUT and PATCH: the object keeps what
    /// clients cannot change, `generation` follows the spec, the status
    /// moves only through its subresource, and a stale `resourceVersion`
    /// conflicts. Returns the written object and its revision (0 if the
    /// write deleted it).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per verb; a struct would only rename them"
    )]
    async fn write_update(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        key: &str,
        current: Stored,
        mut obj: Value,
        sub: Option<&str>,
        query: &Query,
    ) -> Result<(Value, i64), ApiError> {
        let old = &current.value;
        let meta = metadata_mut(&mut obj)?;
        if let Some(n) = meta.get("name").and_then(Value::as_str)
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(url), Some(body)) = (ns, meta.get("namespace").and_then(Value::as_str))
            && !body.is_empty()
            && body != url
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(rv) if parse_rv(rv)? != current.rev => {
                return Err(ApiError::conflict(kind.group, kind.plural, name));
            }
            _ => {}
        }
        // Fields only the server sets.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("name".into(), json!(name));
        match ns {
            Some(ns) => meta.insert("namespace".into(), json!(ns)),
            None => meta.remove("namespace"),
        };
        match sub {
            Some("status") => {
                // Only the status changes through /status.
                let status = obj.get("status").cloned();
                obj = old.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            Some("ephemeralcontainers") => {
                // Only ephemeral containers are added through
                // /ephemeralcontainers; those already there stay as they are.
                let wanted = obj
                    .pointer("/spec/ephemeralContainers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                ephemeral_containers_only_added(old, &wanted, name)?;
                obj = old.clone();
                obj["spec"]["ephemeralContainers"] = wanted;
            }
            Some("approval") => {
                // Only the conditions change through /approval.
                obj = crate::certificates::approval_update(old, &obj);
            }
            Some("finalize") => {
                let finalizers = obj.pointer("/spec/finalizers").cloned();
                obj = old.clone();
                obj["spec"]["finalizers"] = finalizers.unwrap_or_else(|| json!([]));
            }
            _ => {
                if kind.has_subresource("status") {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(o) = obj.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                // As in Kubernetes, a pod's ephemeral containers change only
                // through /ephemeralcontainers.
                if kind.group.is_empty() && kind.plural == "pods" {
                    match old.pointer("/spec/ephemeralContainers") {
                        Some(e) => obj["spec"]["ephemeralContainers"] = e.clone(),
                        None => {
                            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                                spec.remove("ephemeralContainers");
                            }
                        }
                    }
                }
                if spec_changed(old, &obj) {
                    let generation = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    obj["metadata"]["generation"] = json!(generation + 1);
                }
            }
        }
        let unadmitted = obj;
        for _ in 0..CLAIM_RETRIES {
            let mut obj = unadmitted.clone();
            self.admission.admit(kind, &mut obj, Some(old))?;
            if query.dry_run {
                return Ok((obj, current.rev));
            }
            // A deleted object whose last finalizer went away is gone.
            if obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
                && finalizers_empty(kind, &obj)
            {
                let claims = self.admission.claims(kind, None, Some(old));
                return match self
                    .storage
                    .delete_claiming(key, current.rev, &claims)
                    .await?
                {
                    Written::Ok(_) => Ok((obj, 0)),
                    Written::Rejected(_) | Written::Taken(_) => {
                        Err(ApiError::conflict(kind.group, kind.plural, name))
                    }
                };
            }
            if obj == *old && !current.stale {
                // Nothing changed: Kubernetes does not write (no new
                // revision), unless the stored bytes are under an old
                // encryption key.
                return Ok((obj, current.rev));
            }
            let claims = self.admission.claims(kind, Some(&obj), Some(old));
            match self
                .storage
                .update_claiming(key, &obj, current.rev, &claims)
                .await?
            {
                Written::Ok(rev) => return Ok((obj, rev)),
                Written::Rejected(None) => {
                    return Err(ApiError::not_found(kind.group, kind.plural, name));
                }
                Written::Rejected(Some(_)) => {
                    return Err(ApiError::conflict(kind.group, kind.plural, name));
                }
                Written::Taken(claimed) => self.admission.claim_lost(&claimed),
            }
        }
        Err(claims_exhausted(kind, name))
    }

    async fn patch(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        body: Body<'_>,
        sub: Option<&str>,
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let ty = crate::patch::PatchType::from_content_type(body.content_type)?;
        let key = object_key(kind, ns, name);
        for _ in 0..PATCH_RETRIES {
            let current = match self.storage.get(&key).await? {
                Some(c) => c,
                None if ty == crate::patch::PatchType::Apply && sub.is_none() => {
                    // Server-side apply creates what is missing.
                    return self.create(kind, ns, body, query).await;
                }
                None => return Err(ApiError::not_found(kind.group, kind.plural, name)),
            };
            let live = if sub == Some("scale") {
                scale_of(kind, &current.value)
            } else {
                current.value.clone()
            };
            let patched = crate::patch::apply(kind, &live, body.bytes, ty)?;
            let pinned = patched
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|rv| rv != current.rev.to_string());
            let mut target = if sub == Some("scale") {
                apply_scale(&current.value, &patched)?
            } else {
                patched
            };
            if !pinned && let Some(meta) = target.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert("resourceVersion".into(), json!(current.rev.to_string()));
            }
            match self
                .write_update(kind, ns, name, &key, current, target, sub, query)
                .await
            {
                Ok((mut obj, rev)) => {
                    if rev > 0 {
                        set_rv(&mut obj, rev);
                    }
                    if sub == Some("scale") {
                        return Ok(Reply::json(200, &scale_of(kind, &obj)));
                    }
                    return Ok(Reply::json(200, &obj));
                }
                // Someone wrote in between: patch the newer object, unless
                // the patch itself pinned a resourceVersion.
                Err(e) if e.code == 409 && e.reason == "Conflict" && !pinned => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(kind.group, kind.plural, name))
    }

    /// `POST pods/<name>/binding`: the scheduler places a pod on a node.
    async fn bind(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        name: &str,
        body: Body<'_>,
    ) -> Result<Reply, ApiError> {
        let binding = decode_body(&body)?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    name,
                    format!("Binding \"{name}\" is invalid: target.name: Required value"),
                    vec![json!({"reason": "FieldValueRequired", "message": "Required value", "field": "target.name"})],
                )
            })?
            .to_string();
        let key = object_key(kind, ns, name);
        let current = self.get_stored(kind, &key, name).await?;
        if let Some(existing) = current
            .value
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            && !existing.is_empty()
        {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""
                ),
                details: None,
            });
        }
        let mut obj = current.value.clone();
        obj["spec"]["nodeName"] = json!(node);
        match self.storage.update(&key, &obj, current.rev).await? {
            Written::Ok(_) => Ok(Reply::json(
                201,
                &crate::status::success(json!({"name": name, "kind": "pods"})),
            )),
            Written::Rejected(_) | Written::Taken(_) => Err(ApiError::conflict("", "pods", name)),
        }
    }

    /// Deletes one object, or marks it deleted while finalizers (or a
    /// pod's grace period on its node) hold it. Returns the object as the
    /// response shows it and whether it is gone.
    async fn delete(
        &self,
        kind: &'static Kind,
        key: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<(Value, bool), ApiError> {
        for _ in 0..PATCH_RETRIES {
            let current = self.get_stored(kind, key, name).await?;
            let mut obj = current.value.clone();
            if let Some(uid) = &opts.uid
                && obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
            {
                return Err(ApiError::conflict(kind.group, kind.plural, name));
            }
            if let Some(rv) = &opts.resource_version
                && *rv != current.rev.to_string()
            {
                return Err(ApiError::conflict(kind.group, kind.plural, name));
            }
            let mut hold = false;
            {
                let meta = metadata_mut(&mut obj)?;
                let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut() {
                    let add = match opts.propagation.as_deref() {
                        Some("Orphan") => Some("orphan"),
                        Some("Foreground") => Some("foregroundDeletion"),
                        _ => None,
                    };
                    if let Some(f) = add
                        && !list.iter().any(|x| x == f)
                    {
                        list.push(json!(f));
                    }
                    hold |= !list.is_empty();
                }
                if meta
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    meta.remove("finalizers");
                }
            }
            // A pod on a node stops there first: the agent removes it once
            // its containers are gone.
            let grace = if kind.plural == "pods" && kind.group.is_empty() {
                let on_node = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                let grace = opts
                    .grace_period
                    .or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30);
                if on_node && grace > 0 {
                    hold = true;
                }
                Some(grace)
            } else {
                None
            };
            if kind.plural == "namespaces" && kind.group.is_empty() {
                let has_spec_finalizers = obj
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                hold |= has_spec_finalizers;
                if has_spec_finalizers {
                    obj["status"]["phase"] = json!("Terminating");
                }
            }
            if !hold {
                let claims = self.admission.claims(kind, None, Some(&current.value));
                return match self
                    .storage
                    .delete_claiming(key, current.rev, &claims)
                    .await?
                {
                    Written::Ok(rev) => {
                        set_rv(&mut obj, rev);
                        Ok((obj, true))
                    }
                    Written::Rejected(None) => {
                        Err(ApiError::not_found(kind.group, kind.plural, name))
                    }
                    Written::Rejected(Some(_)) | Written::Taken(_) => continue,
                };
            }
            let meta = metadata_mut(&mut obj)?;
            if meta.get("deletionTimestamp").is_none_or(Value::is_null) {
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(now_plus(grace.unwrap_or(0))),
                );
                if let Some(g) = grace {
                    meta.insert("deletionGracePeriodSeconds".into(), json!(g));
                }
            } else if obj == current.value {
                return Ok((obj, false));
            }
            match self.storage.update(key, &obj, current.rev).await? {
                Written::Ok(rev) => {
                    set_rv(&mut obj, rev);
                    return Ok((obj, false));
                }
                Written::Rejected(None) => {
                    return Err(ApiError::not_found(kind.group, kind.plural, name));
                }
                Written::Rejected(Some(_)) | Written::Taken(_) => continue,
            }
        }
        Err(ApiError::conflict(kind.group, kind.plural, name))
    }

    async fn delete_collection(
        &self,
        kind: &'static Kind,
        ns: Option<&str>,
        body: &Body<'_>,
        query: &Query,
    ) -> Result<Reply, ApiError> {
        let opts = delete_options(body, query)?;
        let filter = Filter::of(query, kind.plural)?;
        let prefix = collection_prefix(kind, ns);
        let page = self.storage.list(&prefix, None, 0, None).await?;
        let mut deleted = Vec::new();
        for (key, stored) in page.items {
            if !filter.matches(&stored.value) {
                continue;
            }
            let name = stored
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match self.delete(kind, &key, &name, &opts).await {
                Ok((obj, _)) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Reply::json(
            200,
            &json!({"kind": kind.list_kind(), "apiVersion": kind.api_version(), "metadata": {}, "items": deleted}),
        ))
    }
}

/// Every try to claim an address or port for `name` lost to another
/// writer: the range is (nearly) full or heavily contended.
fn claims_exhausted(kind: &Kind, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": every address or port picked for it was taken by another writer {CLAIM_RETRIES} times; try again",
            kind.group_resource()
        ),
    )
}

/// An item of a list response: a cached entry (written from its
/// pre-serialized JSON, not copied), or a value read from the store.
enum ListItem {
    Cached(Arc<Entry>),
    Stored(Value),
}

impl ListItem {
    fn len(&self) -> usize {
        match self {
            ListItem::Cached(e) => e.json.len() + 1,
            ListItem::Stored(_) => 1024,
        }
    }

    fn write(&self, out: &mut BytesMut) {
        match self {
            ListItem::Cached(e) => out.put_slice(&e.json),
            ListItem::Stored(v) => {
                if let Ok(b) = serde_json::to_vec(v) {
                    out.put_slice(&b);
                }
            }
        }
    }

    fn into_value(self) -> Value {
        match self {
            ListItem::Cached(e) => e.value.clone(),
            ListItem::Stored(v) => v,
        }
    }
}

/// The frame a watcher gets for an event, or none if its selectors hide it.
fn frame_for(e: &Event, prefix: &str, filter: &Filter) -> Option<Bytes> {
    if !e.key.starts_with(prefix) {
        return None;
    }
    let now = filter.matches(&e.object.value);
    let before = e.prev.as_ref().is_some_and(|p| filter.matches(&p.value));
    // An object moving into or out of a selector is added or deleted for
    // that watcher, as Kubernetes' cacher does.
    let change = match (e.change, before, now) {
        (Change::Added, _, true) => Change::Added,
        (Change::Modified, true, true) => Change::Modified,
        (Change::Modified, false, true) => Change::Added,
        (Change::Modified, true, false) => Change::Deleted,
        (Change::Deleted, _, true) => Change::Deleted,
        _ => return None,
    };
    let mut out = BytesMut::with_capacity(e.object.json.len() + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(change.as_str().as_bytes());
    out.put_slice(b"\",\"object\":");
    out.put_slice(&e.object.json);
    out.put_slice(b"}\n");
    Some(out.freeze())
}

fn error_event(e: &ApiError) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: &Kind, rev: i64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
    }
    let ev = json!({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta}});
    let mut v = serde_json::to_vec(&ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn render_one(kind: &Kind, obj: Value, format: Format) -> Result<Reply, ApiError> {
    match format {
        Format::Json => Ok(Reply::json(200, &obj)),
        Format::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            Ok(Reply::table(table(
                kind,
                std::slice::from_ref(&obj),
                json!({"resourceVersion": rv}),
                &Query::default(),
            )))
        }
    }
}

/// A `meta.k8s.io/v1` Table of objects, with the row objects the client
/// asked for (`includeObject`, PartialObjectMetadata by default).
fn table(kind: &Kind, objects: &[Value], list_meta: Value, query: &Query) -> Value {
    let include = query
        .include_object
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    shoal_api::table(
        kind,
        objects,
        list_meta,
        std::time::SystemTime::now(),
        include,
    )
}

/// The key of one object.
pub fn object_key(kind: &Kind, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{}{ns}/{name}", kind.storage_prefix()),
        None => format!("{}{name}", kind.storage_prefix()),
    }
}

/// The key prefix of a collection: a namespace's objects, or all of them.
pub fn collection_prefix(kind: &Kind, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{}{ns}/", kind.storage_prefix()),
        None => kind.storage_prefix(),
    }
}

/// Decodes a JSON, YAML or Kubernetes protobuf body into an object.
pub fn decode_body(body: &Body<'_>) -> Result<Value, ApiError> {
    let ct = body.content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(body.bytes).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => crate::patch::parse_yaml(body.bytes)?,
        shoal_api::proto::CONTENT_TYPE => {
            shoal_api::proto::decode(body.bytes).map_err(|e| match e {
                shoal_api::proto::ProtoError::UnknownKind { .. } => {
                    ApiError::new(415, "UnsupportedMediaType", e.to_string())
                }
                _ => ApiError::bad_request(format!(
                    "the request body is not valid Kubernetes protobuf: {e}"
                )),
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Checks (or fills) `apiVersion` and `kind` against the URL's resource.
fn check_type(kind: &Kind, obj: &mut Value) -> Result<(), ApiError> {
    let api_version = kind.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        Some(_) => {}
        None => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        Some(_) => {}
        None => obj["kind"] = json!(kind.kind),
    }
    Ok(())
}

/// `fieldValidation=Strict` (kubectl's default): unknown fields are a 400
/// naming them. `Warn` and `Ignore` let them through (dropped on the next
/// typed read, as Kubernetes drops them).
fn check_fields(kind: &Kind, obj: &Value, query: &Query) -> Result<(), ApiError> {
    if query.field_validation.as_deref() != Some("Strict") {
        return Ok(());
    }
    let unknown = shoal_api::unknown_fields(kind, obj);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(shoal_api::strict_error_message(
            &unknown,
        )))
    }
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// A new object's status starts empty: nothing has reported on it yet.
/// The phases a kind starts in (Pending, Active) are shoal-api's defaults.
fn prepare_create(kind: &Kind, obj: &mut Value) {
    if !kind.has_subresource("status") {
        return;
    }
    obj["status"] = if kind.group.is_empty() && kind.plural == "services" {
        json!({"loadBalancer": {}})
    } else {
        json!({})
    };
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

fn finalizers_empty(kind: &Kind, obj: &Value) -> bool {
    let meta_empty = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let spec_empty = !(kind.plural == "namespaces" && kind.group.is_empty())
        || obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    // Pods held by their grace period are removed by the agent, not here.
    let pod_on_node = kind.plural == "pods"
        && kind.group.is_empty()
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
    meta_empty && spec_empty && !pod_on_node
}

/// An `autoscaling/v1` Scale for a workload.
fn scale_of(kind: &Kind, obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(if kind.plural == "deployments" { 1 } else { 0 }))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// The workload with the replica count a Scale asks for.
fn apply_scale(current: &Value, scale: &Value) -> Result<Value, ApiError> {
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            format!(
                "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            ),
            vec![
                json!({"reason": "FieldValueInvalid", "message": format!("Invalid value: {replicas}: must be greater than or equal to 0"), "field": "spec.replicas"}),
            ],
        ));
    }
    let mut obj = current.clone();
    obj["spec"]["replicas"] = json!(replicas);
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        obj["metadata"]["resourceVersion"] = rv.clone();
    } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    Ok(obj)
}

/// Options of a delete: from the body (`DeleteOptions`) and the query.
#[derive(Debug, Default)]
struct DeleteOpts {
    propagation: Option<String>,
    grace_period: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(body: &Body<'_>, query: &Query) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        propagation: query.propagation_policy.clone(),
        grace_period: query.grace_period,
        ..DeleteOpts::default()
    };
    if !body.bytes.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body.bytes).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            opts.propagation = Some(p.to_string());
        }
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period = Some(g);
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true)
            && opts.propagation.is_none()
        {
            opts.propagation = Some("Orphan".into());
        }
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    match opts.propagation.as_deref() {
        None | Some("Orphan" | "Foreground" | "Background") => Ok(opts),
        Some(other) => Err(ApiError::bad_request(format!(
            "propagationPolicy {other:?} is not supported: use Orphan, Background or Foreground"
        ))),
    }
}

fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: must be a non-negative integer"
        ))
    })
}

/// The revision an exact list asks for, or 0 for "now".
fn exact_revision(query: &Query) -> Result<i64, ApiError> {
    match (
        query.resource_version.as_deref(),
        query.resource_version_match.as_deref(),
    ) {
        (Some(rv), Some("Exact")) => parse_rv(rv),
        _ => Ok(0),
    }
}

/// How often an update without a resourceVersion is redone after losing
/// a race with another writer (GuaranteedUpdate retries until it wins;
/// this bound only stops a livelock). Each writer that wins makes progress,
/// so N racing writers need at most N-1 retries.
const UNCONDITIONAL_RETRIES: u32 = 100;

/// The 410 for a `continue` token whose revision the store compacted.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

fn encode_continue(rev: i64, start: &str) -> String {
    use base64::Engine as _;
    let token = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rev, start.to_string()))
}

fn set_rv(obj: &mut Value, rev: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

/// Kubernetes' name suffix alphabet: no vowels, no look-alikes.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Now, as Kubernetes writes timestamps.
pub fn now() -> String {
    now_plus(0)
}

fn now_plus(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests;

/// Refuses an `/ephemeralcontainers` write that removes or changes an
/// ephemeral container the pod has, or names one like another container,
/// with the 422 Kubernetes gives.
fn ephemeral_containers_only_added(old: &Value, wanted: &Value, pod: &str) -> Result<(), ApiError> {
    let invalid = |field: String, reason: &str, detail: String| {
        ApiError::invalid(
            "",
            "Pod",
            pod,
            format!("Pod \"{pod}\" is invalid: {field}: {detail}"),
            vec![json!({"reason": reason, "message": detail, "field": field})],
        )
    };
    let Some(wanted) = wanted.as_array() else {
        return Err(invalid(
            "spec.ephemeralContainers".into(),
            "FieldValueInvalid",
            "must be a list of containers".into(),
        ));
    };
    let by_name = |list: &[Value], n: &str| list.iter().find(|c| c["name"] == n).cloned();
    let existing = old
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for e in &existing {
        let n = e["name"].as_str().unwrap_or_default();
        if by_name(wanted, n).as_ref() != Some(e) {
            return Err(invalid(
                "spec.ephemeralContainers".into(),
                "FieldValueForbidden",
                format!("existing ephemeral containers \"{n}\" may not be removed or changed"),
            ));
        }
    }
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| old.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in wanted.iter().enumerate() {
        let n = e["name"].as_str().unwrap_or_default();
        if n.is_empty() {
            return Err(invalid(
                format!("spec.ephemeralContainers[{i}].name"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        if regular.contains(&n) || !seen.insert(n) {
            return Err(invalid(
                format!("spec.ephemeralContainers[{i}].name"),
                "FieldValueDuplicate",
                format!("Duplicate value: \"{n}\""),
            ));
        }
        if e["image"].as_str().is_none_or(str::is_empty) {
            return Err(invalid(
                format!("spec.ephemeralContainers[{i}].image"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
    }
    Ok(())
}
