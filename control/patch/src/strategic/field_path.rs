//! Where in the object a merge is, rendered only when an error names it.

use std::fmt;

/// A field path built on the stack as the merge descends: no allocation
/// until an error renders it as `spec.containers[1].image`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldPath<'a> {
    /// The object itself.
    Root,
    /// A field of an object.
    Field(&'a FieldPath<'a>, &'a str),
    /// An element of a list, by its index in the patch list.
    Index(&'a FieldPath<'a>, usize),
}

impl<'a> FieldPath<'a> {
    /// The path of `name` inside this one.
    pub(crate) fn field(&'a self, name: &'a str) -> FieldPath<'a> {
        FieldPath::Field(self, name)
    }

    /// The path of element `index` of the list at this path.
    pub(crate) fn index(&'a self, index: usize) -> FieldPath<'a> {
        FieldPath::Index(self, index)
    }

    fn write_to(&self, f: &mut fmt::Formatter<'_>) -> Result<bool, fmt::Error> {
        match self {
            FieldPath::Root => Ok(false),
            FieldPath::Field(parent, name) => {
                if parent.write_to(f)? {
                    f.write_str(".")?;
                }
                f.write_str(name)?;
                Ok(true)
            }
            FieldPath::Index(parent, index) => {
                parent.write_to(f)?;
                write!(f, "[{index}]")?;
                Ok(true)
            }
        }
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.write_to(f)? {
            f.write_str("(root)")?;
        }
        Ok(())
    }
}
