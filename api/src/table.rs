//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get`
//! asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) and
//! prints as is. Columns and cells follow Kubernetes' own printers, so users
//! see the NAME/READY/STATUS/RESTARTS/AGE they know; kinds without a printer
//! get Kubernetes' default NAME + CREATED AT table.
//!
//! Like the Kubernetes apiserver, every column is always sent, `-o wide` ones
//! with priority 1; kubectl hides those unless asked.
//!
//! Objects come from users, so they are read leniently: a missing or
//! mistyped field prints as Kubernetes prints an unset one (`""`, `0`,
//! `<none>`), except a field Kubernetes always defaults (a service's type, a
//! port's protocol, a workload's replicas), which prints as its default.

mod cluster;
mod core_kinds;
mod fields;
mod networking;
mod shoal_kinds;
mod workloads;

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::kinds::Kind;
use fields::{format_rfc3339, human_duration, parse_time, str_at};

/// What each row carries besides its cells: the `includeObject` table option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object: rows hold cells only.
    None,
    /// The object's metadata as a `meta.k8s.io/v1` `PartialObjectMetadata`,
    /// which is what kubectl asks for by default.
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

/// An `includeObject` query value other than `None`, `Metadata` or `Object`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("includeObject {value:?} is not valid: use 'Metadata', 'Object', 'None', or leave it out")]
pub struct InvalidIncludeObject {
    /// The value as the client sent it.
    pub value: String,
}

impl FromStr for IncludeObject {
    type Err = InvalidIncludeObject;

    /// Parses the `includeObject` query parameter; empty means the default,
    /// `Metadata`, as in Kubernetes.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "None" => Ok(Self::None),
            "Metadata" | "" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            _ => Err(InvalidIncludeObject {
                value: value.to_string(),
            }),
        }
    }
}

/// The `Table` for `objects` of `kind`, as Kubernetes' apiserver renders it.
///
/// `list_meta` becomes the table's `metadata`: pass the list's metadata
/// (`resourceVersion`, `continue`, `remainingItemCount`) when listing, or
/// `{"resourceVersion": <the object's>}` for a single object, as Kubernetes
/// does. `now` is the clock ages are measured against. Objects are read
/// leniently: a field that is missing or has the wrong type prints as
/// kubectl prints an unset one, so one odd object cannot fail a listing.
pub fn table(
    kind: &Kind,
    objects: &[Value],
    list_meta: Value,
    now: SystemTime,
    include: IncludeObject,
) -> Value {
    let printer = printer(kind);
    let clock = Clock::new(now);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert(
                "cells".to_string(),
                Value::Array((printer.cells)(obj, &clock)),
            );
            if let Some(conditions) = (printer.conditions)(obj) {
                row.insert("conditions".to_string(), conditions);
            }
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert("object".to_string(), partial_object_metadata(obj));
                }
                IncludeObject::Object => {
                    row.insert("object".to_string(), obj.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    let columns: Vec<Value> = printer.columns.iter().map(|c| c.to_json()).collect();
    let list_meta = if list_meta.is_object() {
        list_meta
    } else {
        json!({})
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The row object for `includeObject=Metadata`.
fn partial_object_metadata(obj: &Value) -> Value {
    let metadata = obj
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
    })
}

/// The printer for a kind: Kubernetes' where it has one, else the default.
fn printer(kind: &Kind) -> &'static Printer {
    core_kinds::printer(kind)
        .or_else(|| workloads::printer(kind))
        .or_else(|| networking::printer(kind))
        .or_else(|| cluster::printer(kind))
        .or_else(|| shoal_kinds::printer(kind))
        .unwrap_or(&DEFAULT)
}

/// One column of a table: a `metav1.TableColumnDefinition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column {
    name: &'static str,
    /// OpenAPI type of the cells: `string`, `integer`, `boolean`, `date`.
    ty: &'static str,
    /// `name` for the column holding the object's name.
    format: &'static str,
    description: &'static str,
    /// 0 for the default view, 1 for `-o wide`.
    priority: u8,
}

impl Column {
    const fn string(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            ty: "string",
            format: "",
            description,
            priority: 0,
        }
    }

    const fn integer(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            ty: "integer",
            format: "",
            description,
            priority: 0,
        }
    }

    const fn boolean(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            ty: "boolean",
            format: "",
            description,
            priority: 0,
        }
    }

    /// Shown only with `-o wide`.
    const fn wide(self) -> Self {
        Self {
            priority: 1,
            ..self
        }
    }

    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of a name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const CREATION_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// The NAME column every printer starts with.
const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: NAME_DOC,
    priority: 0,
};

/// The AGE column.
const AGE: Column = Column::string("Age", CREATION_DOC);

/// The wide CONTAINERS column of workload kinds.
const CONTAINERS: Column =
    Column::string("Containers", "Names of each container in the template.").wide();

/// The wide IMAGES column of workload kinds.
const IMAGES: Column = Column::string(
    "Images",
    "Images referenced by each container in the template.",
)
.wide();

/// How one kind prints: its columns and how an object becomes cells.
struct Printer {
    columns: &'static [Column],
    /// One cell per column, in order.
    cells: fn(&Value, &Clock) -> Vec<Value>,
    /// The row's `conditions`, for kinds whose rows carry any.
    conditions: fn(&Value) -> Option<Value>,
}

fn no_conditions(_: &Value) -> Option<Value> {
    None
}

/// Kubernetes' default table (`rest.NewDefaultTableConvertor`) for kinds
/// without a printer: the name and the creation time as RFC 3339.
static DEFAULT: Printer = Printer {
    columns: &[
        NAME,
        Column {
            name: "Created At",
            ty: "date",
            format: "",
            description: CREATION_DOC,
            priority: 0,
        },
    ],
    cells: default_cells,
    conditions: no_conditions,
};

fn default_cells(obj: &Value, _: &Clock) -> Vec<Value> {
    let created = parse_time(str_at(obj, "/metadata/creationTimestamp"));
    vec![name(obj), Value::from(format_rfc3339(created))]
}

/// The object's name as a cell.
fn name(obj: &Value) -> Value {
    Value::from(str_at(obj, "/metadata/name"))
}

/// The time ages are measured against.
struct Clock {
    /// Nanoseconds since the Unix epoch.
    now: i128,
}

impl Clock {
    fn new(now: SystemTime) -> Self {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
            Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
        };
        Self { now }
    }

    /// Kubernetes' `translateTimestampSince`: how long ago a timestamp was,
    /// `<unknown>` when it is unset.
    fn since(&self, timestamp: &str) -> String {
        match parse_time(timestamp) {
            Some(t) => human_duration(self.now - t),
            None => "<unknown>".to_string(),
        }
    }

    /// The AGE cell of an object.
    fn age(&self, obj: &Value) -> Value {
        Value::from(self.since(str_at(obj, "/metadata/creationTimestamp")))
    }
}

#[cfg(test)]
mod tests;
