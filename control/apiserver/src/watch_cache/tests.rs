use serde_json::json;

use super::*;

fn pods() -> &'static Kind {
    shoal_api::find_resource("", "v1", "pods").expect("pods are served")
}

fn put(name: &str, rev: i64) -> Event {
    Event {
        change: Change::Modified,
        key: format!("/registry/pods/demo/{name}"),
        rev,
        object: Entry::new(
            json!({"metadata": {"name": name, "resourceVersion": rev.to_string()}}),
            rev,
        ),
        prev: None,
    }
}

fn delete(name: &str, rev: i64) -> Event {
    Event {
        change: Change::Deleted,
        key: format!("/registry/pods/demo/{name}"),
        rev,
        object: Entry::new(Value::Null, rev),
        prev: None,
    }
}

#[test]
fn a_fresh_watch_starts_with_every_object_then_follows() {
    let cache = ResourceCache::new(pods());
    assert_eq!(cache.subscribe(None).err(), Some(WatchFrom::NotReady));
    cache.load(
        vec![(
            "/registry/pods/demo/a".into(),
            Entry::new(json!({"metadata": {"name": "a"}}), 5),
        )],
        7,
    );
    let mut sub = cache.subscribe(None).expect("ready");
    assert_eq!(sub.backlog.len(), 1);
    assert_eq!(sub.backlog[0].change, Change::Added);
    assert_eq!(sub.rev, 7);
    cache.apply(vec![put("b", 8), put("a", 9), delete("b", 10)], None);
    let kinds: Vec<_> = std::iter::from_fn(|| sub.live.try_recv().ok())
        .map(|e| (e.change, e.rev))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Change::Added, 8),
            (Change::Modified, 9),
            (Change::Deleted, 10)
        ]
    );
}

#[test]
fn deletes_carry_the_last_state_and_resume_replays_history() {
    let cache = ResourceCache::new(pods());
    cache.load(vec![], 1);
    cache.apply(vec![put("a", 2), delete("a", 3)], None);
    let sub = cache.subscribe(Some(2)).expect("in window");
    assert_eq!(sub.backlog.len(), 1);
    let deleted = &sub.backlog[0];
    assert_eq!(deleted.object.value["metadata"]["name"], "a");
    assert_eq!(deleted.object.value["metadata"]["resourceVersion"], "3");
    assert!(
        cache
            .list("/registry/pods/")
            .is_some_and(|(items, rev)| items.is_empty() && rev == 3)
    );
}

#[test]
fn a_watch_older_than_the_window_is_refused() {
    let cache = ResourceCache::new(pods());
    cache.load(vec![], 100);
    assert_eq!(
        cache.subscribe(Some(50)).err(),
        Some(WatchFrom::TooOld { oldest: 100 })
    );
    assert!(cache.subscribe(Some(100)).is_ok());
}

#[test]
fn a_relist_after_compaction_tells_watchers_the_difference() {
    let cache = ResourceCache::new(pods());
    let a = Entry::new(json!({"metadata": {"name": "a"}}), 2);
    let b = Entry::new(json!({"metadata": {"name": "b"}}), 3);
    cache.load(
        vec![
            ("/registry/pods/demo/a".into(), a),
            ("/registry/pods/demo/b".into(), b.clone()),
        ],
        3,
    );
    let mut sub = cache.subscribe(Some(3)).expect("ready");
    let c = Entry::new(json!({"metadata": {"name": "c"}}), 9);
    cache.load(
        vec![
            ("/registry/pods/demo/b".into(), b),
            ("/registry/pods/demo/c".into(), c),
        ],
        10,
    );
    let got: Vec<_> = std::iter::from_fn(|| sub.live.try_recv().ok())
        .map(|e| {
            (
                e.change,
                e.object.value["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Change::Deleted, "a".to_string()),
            (Change::Added, "c".to_string())
        ]
    );
}

#[test]
fn progress_moves_the_revision_without_events() {
    let cache = ResourceCache::new(pods());
    cache.load(vec![], 4);
    cache.apply(vec![], Some(40));
    assert_eq!(cache.revision(), 40);
}
