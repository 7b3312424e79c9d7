//! Kubernetes strategic merge patch over serde_json values: the behaviour of
//! apimachinery's `strategicpatch.StrategicMergeMapPatch` as the apiserver
//! runs it (parallel lists merged, unmatched nulls ignored), written afresh.
//!
//! Maps merge recursively and `null` deletes a field. Lists whose field has
//! the merge strategy merge element by element, matched by the field's merge
//! key (lists of scalars merge as ordered sets); other lists are replaced.
//! The directives kubectl sends are honoured: `$patch` (replace, delete,
//! merge) on maps and list elements, `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.
//!
//! Where this deliberately differs from apimachinery: `$patch: merge` is a
//! no-op marker rather than an error; directives are never left in the
//! result (apimachinery stores e.g. a `$patch: replace` map that had no live
//! counterpart as nothing, and keeps directive keys nested in new values);
//! live list elements without a merge key are kept in place instead of
//! failing the patch; `$setElementOrder` on a list that is not a merge
//! list (for unknown kinds, every list) is ignored; list elements are
//! compared in linear time with hash maps.
//!
//! As in apimachinery, a patch list without `$setElementOrder` puts its new
//! elements before the live ones they are not ordered against: adding
//! container `c` to `[a, b]` gives `[c, a, b]`. kubectl sends
//! `$setElementOrder` with every list it changes, so `kubectl apply` keeps
//! the configured order.
//!
//! Recursion follows the nesting of the inputs, which the caller bounds.

mod field_path;
mod list_key;

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::error::MergeError;
use crate::schema::{Field, Schema, Strategy};

use field_path::FieldPath;
use list_key::ListKey;

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

type Object = Map<String, Value>;

/// A merge failure and where in the object it happened.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The field path, e.g. `spec.containers[1]`.
    pub(crate) path: String,
    /// What is wrong there.
    pub(crate) reason: MergeError,
}

fn fail<T>(path: &FieldPath<'_>, reason: MergeError) -> Result<T, Failure> {
    Err(Failure {
        path: path.to_string(),
        reason,
    })
}

/// Whether the patch is a strategic merge patch or an apply configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A strategic merge patch: directives are honoured.
    Patch,
    /// An apply configuration: directives are rejected, and unions (fields
    /// with the retainKeys strategy) keep only the members it sets.
    Apply,
}

/// Merges `patch` into `original`, the live object, following `schema`.
pub(crate) fn merge(
    original: Object,
    patch: Object,
    schema: Schema,
    mode: Mode,
) -> Result<Object, Failure> {
    if mode == Mode::Apply {
        reject_directives(&patch, &FieldPath::Root)?;
    }
    Merger { mode }.merge_map(original, patch, schema, false, &FieldPath::Root)
}

/// What a `$patch` key in a list element asks for.
enum ElementDirective {
    /// No `$patch`: the element is data.
    None,
    Delete,
    Replace,
    Merge,
    Unknown(String),
}

impl ElementDirective {
    fn of(element: &Value) -> Self {
        match element.as_object().and_then(|m| m.get(PATCH_DIRECTIVE)) {
            None => Self::None,
            Some(directive) => match directive.as_str() {
                Some("delete") => Self::Delete,
                Some("replace") => Self::Replace,
                Some("merge") => Self::Merge,
                _ => Self::Unknown(directive.to_string()),
            },
        }
    }
}

struct Merger {
    mode: Mode,
}

impl Merger {
    /// Merges two maps. `retain_keys` says the map is a union whose unset
    /// members an apply configuration clears.
    fn merge_map(
        &self,
        mut original: Object,
        mut patch: Object,
        schema: Schema,
        retain_keys: bool,
        path: &FieldPath<'_>,
    ) -> Result<Object, Failure> {
        if let Some(directive) = patch.remove(PATCH_DIRECTIVE) {
            match directive.as_str() {
                Some("replace") => {
                    return self.merge_map(Object::new(), patch, schema, false, path);
                }
                Some("delete") => return Ok(Object::new()),
                Some("merge") => {}
                _ => {
                    return fail(
                        &path.field(PATCH_DIRECTIVE),
                        MergeError::UnknownDirective(directive.to_string()),
                    );
                }
            }
        }

        if let Some(retain) = patch.remove(RETAIN_KEYS) {
            retain_listed_keys(&mut original, &patch, retain, &path.field(RETAIN_KEYS))?;
        } else if retain_keys && self.mode == Mode::Apply {
            original.retain(|key, _| patch.contains_key(key));
        }

        // Ordered lists first: each takes its list out of the patch.
        let order_keys: Vec<String> = patch
            .keys()
            .filter(|key| key.starts_with(SET_ELEMENT_ORDER))
            .cloned()
            .collect();
        for key in order_keys {
            let Some(order) = patch.remove(&key) else {
                continue;
            };
            let here = path.field(&key);
            let name = directive_field(&key, SET_ELEMENT_ORDER, &here)?;
            self.set_element_order(&mut original, &mut patch, name, order, schema, path, &here)?;
        }

        // Deletions from lists of scalars come after the lists' own merge,
        // so a patch adding and deleting the same value ends without it.
        let mut deletions = Vec::new();
        for (key, value) in patch {
            if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                deletions.push((key, value));
                continue;
            }
            let here = path.field(&key);
            let merged =
                self.merge_value(original.remove(&key), value, schema.field(&key), &here)?;
            if let Some(merged) = merged {
                original.insert(key, merged);
            }
        }
        for (key, value) in deletions {
            let here = path.field(&key);
            let name = directive_field(&key, DELETE_FROM_PRIMITIVE_LIST, &here)?;
            let Value::Array(doomed) = value else {
                return fail(&here, MergeError::NotAList);
            };
            if let Some(Value::Array(list)) = original.get_mut(name) {
                let doomed: HashSet<ListKey> = doomed.iter().map(ListKey::of).collect();
                list.retain(|element| !doomed.contains(&ListKey::of(element)));
            }
        }
        Ok(original)
    }

    /// Merges one field's patch value into its live value. None removes the
    /// field.
    fn merge_value(
        &self,
        original: Option<Value>,
        patch: Value,
        field: Option<&'static Field>,
        path: &FieldPath<'_>,
    ) -> Result<Option<Value>, Failure> {
        let strategy = field.map_or(Strategy::Default, |f| f.strategy);
        let schema = field.map_or(Schema::EMPTY, |f| f.schema);
        let retain_keys = field.is_some_and(|f| f.retain_keys);
        match (original, patch) {
            (_, Value::Null) => Ok(None),
            (Some(Value::Object(original)), Value::Object(patch))
                if strategy != Strategy::Replace =>
            {
                let merged = self.merge_map(original, patch, schema, retain_keys, path)?;
                Ok(Some(Value::Object(merged)))
            }
            (Some(Value::Array(original)), Value::Array(patch)) => Ok(Some(Value::Array(
                self.merge_list(original, patch, field, path)?,
            ))),
            (_, Value::Array(patch)) => Ok(Some(Value::Array(self.merge_list(
                Vec::new(),
                patch,
                field,
                path,
            )?))),
            (_, patch) => self.new_value(patch, schema, path),
        }
    }

    /// A patch value with no live counterpart, cleaned of directives and
    /// nulls. None when it is a `$patch: delete` map.
    fn new_value(
        &self,
        patch: Value,
        schema: Schema,
        path: &FieldPath<'_>,
    ) -> Result<Option<Value>, Failure> {
        match patch {
            Value::Object(patch) => {
                if patch.get(PATCH_DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    return Ok(None);
                }
                let merged = self.merge_map(Object::new(), patch, schema, false, path)?;
                Ok(Some(Value::Object(merged)))
            }
            Value::Array(patch) => {
                let elements = patch.into_iter().enumerate();
                Ok(Some(Value::Array(self.new_list(
                    elements,
                    Schema::EMPTY,
                    path,
                )?)))
            }
            scalar => Ok(Some(scalar)),
        }
    }

    /// A list taken whole from the patch: directive elements dropped, the
    /// rest cleaned. Elements come with their index in the patch list.
    fn new_list(
        &self,
        elements: impl IntoIterator<Item = (usize, Value)>,
        schema: Schema,
        path: &FieldPath<'_>,
    ) -> Result<Vec<Value>, Failure> {
        let mut list = Vec::new();
        for (index, element) in elements {
            if !matches!(ElementDirective::of(&element), ElementDirective::None) {
                continue;
            }
            if let Some(element) = self.new_value(element, schema, &path.index(index))? {
                list.push(element);
            }
        }
        Ok(list)
    }

    /// Merges a list field: by key or as a set for merge lists, replaced
    /// otherwise.
    fn merge_list(
        &self,
        mut original: Vec<Value>,
        patch: Vec<Value>,
        field: Option<&'static Field>,
        path: &FieldPath<'_>,
    ) -> Result<Vec<Value>, Failure> {
        let strategy = field.map_or(Strategy::Default, |f| f.strategy);
        let schema = field.map_or(Schema::EMPTY, |f| f.schema);
        if strategy != Strategy::Merge {
            return self.new_list(patch.into_iter().enumerate(), schema, path);
        }
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let merge_key = field.and_then(|f| f.merge_key);
        let retain_keys = field.is_some_and(|f| f.retain_keys);

        let mut replace = false;
        let mut deleted = HashSet::new();
        let mut items = Vec::with_capacity(patch.len());
        for (index, mut element) in patch.into_iter().enumerate() {
            let here = path.index(index);
            match ElementDirective::of(&element) {
                ElementDirective::None => items.push((index, element)),
                ElementDirective::Delete => {
                    let Some(key) = merge_key else {
                        return fail(&here, MergeError::DeleteWithoutMergeKey);
                    };
                    let Some(value) = ListKey::of_field(&element, key) else {
                        return fail(&here, MergeError::MissingMergeKey(key));
                    };
                    deleted.insert(value);
                }
                ElementDirective::Replace => replace = true,
                ElementDirective::Merge => {
                    if let Some(object) = element.as_object_mut() {
                        object.remove(PATCH_DIRECTIVE);
                    }
                    items.push((index, element));
                }
                ElementDirective::Unknown(directive) => {
                    return fail(
                        &here.field(PATCH_DIRECTIVE),
                        MergeError::UnknownDirective(directive),
                    );
                }
            }
        }
        if replace {
            return self.new_list(items, schema, path);
        }

        let mut objects = false;
        let mut scalars = false;
        for element in original.iter().chain(items.iter().map(|(_, e)| e)) {
            match element {
                Value::Array(_) => return fail(path, MergeError::ListOfLists),
                Value::Object(_) => objects = true,
                _ => scalars = true,
            }
        }
        if objects && scalars {
            return fail(path, MergeError::MixedElements);
        }

        if !objects {
            // An ordered set of scalars.
            let server_order = positions(&original, None);
            let patch_order = positions(items.iter().map(|(_, e)| e), None);
            let mut seen = HashSet::new();
            let merged: Vec<Value> = original
                .into_iter()
                .chain(items.into_iter().map(|(_, e)| e))
                .filter(|element| seen.insert(ListKey::of(element)))
                .collect();
            return Ok(interleave(merged, None, &patch_order, &server_order));
        }

        let Some(key) = merge_key else {
            return fail(path, MergeError::NoMergeKey);
        };
        if !deleted.is_empty() {
            original.retain(|element| {
                !ListKey::of_field(element, key).is_some_and(|value| deleted.contains(&value))
            });
        }
        let server_order = positions(&original, Some(key));
        let mut found = server_order.clone();
        let mut patch_order = HashMap::new();
        for (position, (index, element)) in items.into_iter().enumerate() {
            let here = path.index(index);
            let Value::Object(element) = element else {
                return fail(&here, MergeError::ElementNotObject(key));
            };
            let Some(value) = element.get(key).map(ListKey::of) else {
                return fail(&here, MergeError::MissingMergeKey(key));
            };
            patch_order.entry(value.clone()).or_insert(position);
            let slot = found.get(&value).and_then(|&at| original.get_mut(at));
            if let Some(slot) = slot {
                let live = match std::mem::take(slot) {
                    Value::Object(live) => live,
                    _ => Object::new(),
                };
                *slot = Value::Object(self.merge_map(live, element, schema, retain_keys, &here)?);
            } else if let Some(new) = self.new_value(Value::Object(element), schema, &here)? {
                found.insert(value, original.len());
                original.push(new);
            }
        }
        Ok(interleave(original, Some(key), &patch_order, &server_order))
    }

    /// Handles `$setElementOrder/<name>`: merges the patch's `<name>` list
    /// (if any) and orders the result as the directive says, keeping live
    /// elements it does not name where they were.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all state of merge_map"
    )]
    fn set_element_order(
        &self,
        original: &mut Object,
        patch: &mut Object,
        name: &str,
        order: Value,
        schema: Schema,
        path: &FieldPath<'_>,
        here: &FieldPath<'_>,
    ) -> Result<(), Failure> {
        let Value::Array(order) = order else {
            return fail(here, MergeError::NotAList);
        };
        let field = schema.field(name);
        if field.is_none_or(|f| f.strategy != Strategy::Merge) {
            // A list the patch replaces has no live elements to order; its
            // patch list, if any, is merged with the other fields.
            return Ok(());
        }
        let merge_key = field.and_then(|f| f.merge_key);
        let list_path = path.field(name);
        let patch_list = match patch.remove(name) {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(_) => return fail(&list_path, MergeError::NotAList),
        };
        if let Some(list) = &patch_list {
            check_order(list, &order, merge_key, &list_path, here)?;
        }
        let original_list = match original.remove(name) {
            Some(Value::Array(list)) => Some(list),
            Some(other) => {
                original.insert(name.to_owned(), other);
                None
            }
            None => None,
        };
        let server_order = original_list
            .as_ref()
            .map(|list| positions(list, merge_key))
            .unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (Some(list), None) => list,
            (list, Some(patch)) => {
                self.merge_list(list.unwrap_or_default(), patch, field, &list_path)?
            }
            (None, None) => return Ok(()),
        };
        let mut order_positions = HashMap::new();
        for (position, element) in order.iter().enumerate() {
            let value = match merge_key {
                None => ListKey::of(element),
                Some(key) => {
                    let here = here.index(position);
                    let Value::Object(element) = element else {
                        return fail(&here, MergeError::ElementNotObject(key));
                    };
                    let Some(value) = element.get(key) else {
                        return fail(&here, MergeError::MissingMergeKey(key));
                    };
                    ListKey::of(value)
                }
            };
            order_positions.entry(value).or_insert(position);
        }
        let ordered = interleave(merged, merge_key, &order_positions, &server_order);
        original.insert(name.to_owned(), Value::Array(ordered));
        Ok(())
    }
}

/// The list field a `$setElementOrder/<field>` or
/// `$deleteFromPrimitiveList/<field>` key names.
fn directive_field<'k>(
    key: &'k str,
    prefix: &'static str,
    path: &FieldPath<'_>,
) -> Result<&'k str, Failure> {
    match key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(name) if !name.is_empty() => Ok(name),
        _ => fail(path, MergeError::DirectiveWithoutField(prefix.to_owned())),
    }
}

/// `$retainKeys`: clears live fields not listed, after checking the patch
/// sets nothing outside the list.
fn retain_listed_keys(
    original: &mut Object,
    patch: &Object,
    retain: Value,
    path: &FieldPath<'_>,
) -> Result<(), Failure> {
    let Value::Array(names) = retain else {
        return fail(path, MergeError::NotAList);
    };
    let mut keep = HashSet::with_capacity(names.len());
    for name in &names {
        let Some(name) = name.as_str() else {
            return fail(path, MergeError::RetainKeysNotNames);
        };
        keep.insert(name);
    }
    for (key, value) in patch {
        let directive =
            key.starts_with(DELETE_FROM_PRIMITIVE_LIST) || key.starts_with(SET_ELEMENT_ORDER);
        if !value.is_null() && !directive && !keep.contains(key.as_str()) {
            return fail(path, MergeError::NotRetained(key.clone()));
        }
    }
    original.retain(|key, _| keep.contains(key.as_str()));
    Ok(())
}

/// Checks that the patch list's elements (deletions and directive elements
/// aside) appear in the `$setElementOrder` list in the same relative order.
fn check_order(
    patch: &[Value],
    order: &[Value],
    merge_key: Option<&'static str>,
    list_path: &FieldPath<'_>,
    order_path: &FieldPath<'_>,
) -> Result<(), Failure> {
    let identity = |element: &Value, path: &FieldPath<'_>| match merge_key {
        None => Ok(ListKey::of(element)),
        Some(key) => match element.as_object() {
            None => fail(path, MergeError::ElementNotObject(key)),
            Some(object) => match object.get(key) {
                None => fail(path, MergeError::MissingMergeKey(key)),
                Some(value) => Ok(ListKey::of(value)),
            },
        },
    };
    let mut order_iter = order.iter().enumerate();
    for (index, element) in patch.iter().enumerate() {
        if !matches!(ElementDirective::of(element), ElementDirective::None) {
            continue;
        }
        let wanted = identity(element, &list_path.index(index))?;
        loop {
            let Some((position, candidate)) = order_iter.next() else {
                return fail(order_path, MergeError::OrderMismatch);
            };
            if identity(candidate, &order_path.index(position))? == wanted {
                break;
            }
        }
    }
    Ok(())
}

/// The identity of a list element: its merge key's value, or for scalars the
/// value itself.
fn identity(element: &Value, merge_key: Option<&str>) -> Option<ListKey> {
    match merge_key {
        Some(key) => ListKey::of_field(element, key),
        None => Some(ListKey::of(element)),
    }
}

/// The first position of each element identity in a list.
fn positions<'v>(
    list: impl IntoIterator<Item = &'v Value>,
    merge_key: Option<&str>,
) -> HashMap<ListKey, usize> {
    let mut positions = HashMap::new();
    for (position, element) in list.into_iter().enumerate() {
        if let Some(value) = identity(element, merge_key) {
            positions.entry(value).or_insert(position);
        }
    }
    positions
}

/// Orders a merged list as apimachinery does: elements named by the patch
/// (or its `$setElementOrder`) in that order, and live-only elements slotted
/// back in before the first patch element they preceded in the live list.
fn interleave(
    merged: Vec<Value>,
    merge_key: Option<&str>,
    patch_order: &HashMap<ListKey, usize>,
    server_order: &HashMap<ListKey, usize>,
) -> Vec<Value> {
    let mut from_patch = Vec::new();
    let mut server_only = Vec::new();
    for element in merged {
        let value = identity(&element, merge_key);
        match value.as_ref().and_then(|v| patch_order.get(v)) {
            Some(&position) => from_patch.push((position, value, element)),
            None => server_only.push((value, element)),
        }
    }
    from_patch.sort_by_key(|(position, _, _)| *position);

    let live_position = |value: &Option<ListKey>| value.as_ref().and_then(|v| server_order.get(v));
    let mut ordered = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((l, _)), Some((_, r, _))) => {
                matches!((live_position(l), live_position(r)), (Some(a), Some(b)) if a < b)
            }
        };
        let next = if take_left {
            left.next().map(|(_, element)| element)
        } else {
            right.next().map(|(_, _, element)| element)
        };
        ordered.extend(next);
    }
    ordered
}

/// Fails on the first patch directive in an apply configuration.
fn reject_directives(object: &Object, path: &FieldPath<'_>) -> Result<(), Failure> {
    for (key, value) in object {
        let here = path.field(key);
        let directive = key == PATCH_DIRECTIVE
            || key == RETAIN_KEYS
            || key.starts_with(SET_ELEMENT_ORDER)
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
        if directive {
            return fail(&here, MergeError::DirectiveInApply(key.clone()));
        }
        reject_directives_in(value, &here)?;
    }
    Ok(())
}

fn reject_directives_in(value: &Value, path: &FieldPath<'_>) -> Result<(), Failure> {
    match value {
        Value::Object(object) => reject_directives(object, path),
        Value::Array(list) => {
            for (index, element) in list.iter().enumerate() {
                reject_directives_in(element, &path.index(index))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
