//! RegisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions,
//! ListTaskDefinitionFamilies, DeregisterTaskDefinition.
//!
//! Revisions of a family count from 1; `families/<family>` holds the latest revision
//! number and is bumped with compare-and-swap in the same transaction that writes the
//! new revision, so concurrent registrations never share a number.

use std::collections::BTreeMap;

use model::arn::TaskDefinitionRef;
use model::ops::*;
use model::tag::{validate_tags, Tag};
use model::task_definition::TaskDefinition;
use model::EcsError;
use serde::{Deserialize, Serialize};
use store::{Expect, Op, StoreError, StoreJsonExt, Versioned};

use crate::{internal, Control};

/// A registered revision as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredTaskDefinition {
    pub definition: TaskDefinition,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

pub(crate) fn revision_key(family: &str, revision: u32) -> String {
    format!("taskdefs/{family}/{revision:010}")
}

fn family_key(family: &str) -> String {
    format!("families/{family}")
}

impl Control {
    pub(crate) async fn register_task_definition(
        &self,
        r: RegisterTaskDefinitionRequest,
    ) -> Result<RegisterTaskDefinitionResponse, EcsError> {
        validate_tags(&r.tags)?;
        let mut definition = model::validate::task_definition(r.task_definition)?;
        let family = definition.family.clone();
        loop {
            let latest = self
                .store()
                .get_json::<u32>(&family_key(&family))
                .await
                .map_err(internal)?;
            let (revision, expect) = match &latest {
                Some(v) => (v.value + 1, Expect::Revision(v.mod_revision)),
                None => (1, Expect::Absent),
            };
            definition.revision = Some(revision);
            definition.task_definition_arn = Some(self.scope().task_definition(&family, revision));
            definition.status = Some("ACTIVE".into());
            definition.registered_at = Some(model::now());
            definition.registered_by = Some(format!("arn:aws:iam::{}:root", self.scope().account));
            let stored = StoredTaskDefinition {
                definition: definition.clone(),
                tags: r.tags.clone(),
            };
            let ops = vec![
                Op::put_json(family_key(&family), &revision, expect).map_err(internal)?,
                Op::put_json(revision_key(&family, revision), &stored, Expect::Absent)
                    .map_err(internal)?,
            ];
            match self.store().txn(ops).await {
                Ok(_) => {
                    tracing::info!(family = %family, revision, "task definition registered");
                    return Ok(RegisterTaskDefinitionResponse {
                        task_definition: definition,
                        tags: r.tags,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
    }

    /// Finds a revision: `family` alone means the latest ACTIVE one.
    pub(crate) async fn find_task_definition(
        &self,
        identifier: &str,
    ) -> Result<Versioned<StoredTaskDefinition>, EcsError> {
        let wanted = TaskDefinitionRef::parse(identifier)?;
        let not_found = || {
            EcsError::Client(format!(
                "Unable to describe task definition '{identifier}': it is not registered. List them with ListTaskDefinitions."
            ))
        };
        match wanted.revision {
            Some(revision) => self
                .store()
                .get_json::<StoredTaskDefinition>(&revision_key(&wanted.family, revision))
                .await
                .map_err(internal)?
                .ok_or_else(not_found),
            None => self
                .store()
                .list_json::<StoredTaskDefinition>(&format!("taskdefs/{}/", wanted.family))
                .await
                .map_err(internal)?
                .into_iter()
                .rev()
                .find(|t| t.value.definition.status.as_deref() == Some("ACTIVE"))
                .ok_or_else(not_found),
        }
    }

    pub(crate) async fn describe_task_definition(
        &self,
        r: DescribeTaskDefinitionRequest,
    ) -> Result<DescribeTaskDefinitionResponse, EcsError> {
        let stored = self.find_task_definition(&r.task_definition).await?.value;
        let include_tags = r.include.iter().any(|i| i == "TAGS");
        Ok(DescribeTaskDefinitionResponse {
            task_definition: stored.definition,
            tags: if include_tags { stored.tags } else { vec![] },
        })
    }

    async fn all_task_definitions(&self) -> Result<Vec<TaskDefinition>, EcsError> {
        Ok(self
            .store()
            .list_json::<StoredTaskDefinition>("taskdefs/")
            .await
            .map_err(internal)?
            .into_iter()
            .map(|v| v.value.definition)
            .collect())
    }

    pub(crate) async fn list_task_definitions(
        &self,
        r: ListTaskDefinitionsRequest,
    ) -> Result<ListTaskDefinitionsResponse, EcsError> {
        let status = status_filter(r.status.as_deref())?;
        let mut matching: Vec<TaskDefinition> = self
            .all_task_definitions()
            .await?
            .into_iter()
            .filter(|d| r.family_prefix.as_ref().is_none_or(|f| &d.family == f))
            .filter(|d| d.status.as_deref() == Some(status))
            .collect();
        let descending = match r.sort.as_deref() {
            None | Some("ASC") => false,
            Some("DESC") => true,
            Some(other) => {
                return Err(EcsError::InvalidParameter(format!(
                    "Invalid sort '{other}': use ASC or DESC."
                )))
            }
        };
        if descending {
            matching.reverse();
        }
        // Pagination keys must grow along the list: position in the sorted list.
        let keyed: Vec<(String, String)> = matching
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("{i:010}"),
                    d.task_definition_arn.clone().unwrap_or_default(),
                )
            })
            .collect();
        let (page, next_token) = page(
            &keyed,
            |(k, _)| k.clone(),
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListTaskDefinitionsResponse {
            task_definition_arns: page.into_iter().map(|(_, arn)| arn).collect(),
            next_token,
        })
    }

    pub(crate) async fn list_task_definition_families(
        &self,
        r: ListTaskDefinitionFamiliesRequest,
    ) -> Result<ListTaskDefinitionFamiliesResponse, EcsError> {
        let status = r.status.as_deref().unwrap_or("ACTIVE");
        if !["ACTIVE", "INACTIVE", "ALL"].contains(&status) {
            return Err(EcsError::InvalidParameter(format!(
                "Invalid status '{status}': use ACTIVE, INACTIVE or ALL."
            )));
        }
        let mut active: BTreeMap<String, bool> = BTreeMap::new();
        for d in self.all_task_definitions().await? {
            let is_active = d.status.as_deref() == Some("ACTIVE");
            *active.entry(d.family).or_default() |= is_active;
        }
        let families: Vec<String> = active
            .into_iter()
            .filter(|(f, _)| r.family_prefix.as_ref().is_none_or(|p| f.starts_with(p)))
            .filter(|(_, a)| match status {
                "ACTIVE" => *a,
                "INACTIVE" => !*a,
                _ => true,
            })
            .map(|(f, _)| f)
            .collect();
        let (families, next_token) = page(
            &families,
            Clone::clone,
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListTaskDefinitionFamiliesResponse {
            families,
            next_token,
        })
    }

    pub(crate) async fn deregister_task_definition(
        &self,
        r: DeregisterTaskDefinitionRequest,
    ) -> Result<DeregisterTaskDefinitionResponse, EcsError> {
        if TaskDefinitionRef::parse(&r.task_definition)?
            .revision
            .is_none()
        {
            return Err(EcsError::Client(format!(
                "Invalid revision number: deregister a revision as family:revision, not '{}'.",
                r.task_definition
            )));
        }
        let current = self.find_task_definition(&r.task_definition).await?;
        let mut stored = current.value;
        if stored.definition.status.as_deref() == Some("ACTIVE") {
            stored.definition.status = Some("INACTIVE".into());
            stored.definition.deregistered_at = Some(model::now());
            self.store()
                .put_json(
                    &current.key,
                    &stored,
                    Expect::Revision(current.mod_revision),
                )
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => EcsError::Conflict(
                        "The task definition changed during the request: retry.".into(),
                    ),
                    e => internal(e),
                })?;
        }
        Ok(DeregisterTaskDefinitionResponse {
            task_definition: stored.definition,
        })
    }
}

fn status_filter(status: Option<&str>) -> Result<&str, EcsError> {
    match status.unwrap_or("ACTIVE") {
        s @ ("ACTIVE" | "INACTIVE" | "DELETE_IN_PROGRESS") => Ok(s),
        other => Err(EcsError::InvalidParameter(format!(
            "Invalid status '{other}': use ACTIVE or INACTIVE."
        ))),
    }
}
