//! TagResource, UntagResource, ListTagsForResource on clusters, task definitions and
//! tasks.

use model::arn::Resource;
use model::cluster::Cluster;
use model::ops::*;
use model::tag::{merge_tags, validate_tags, Tag};
use model::EcsError;
use store::{Expect, StoreError, StoreJsonExt};

use crate::clusters::cluster_key;
use crate::services::{service_key, ServiceRecord};
use crate::task_definitions::{revision_key, StoredTaskDefinition};
use crate::tasks::task_key;
use crate::{internal, Control, TaskRecord};

impl Control {
    pub(crate) async fn tag_resource(
        &self,
        r: TagResourceRequest,
    ) -> Result<TagResourceResponse, EcsError> {
        validate_tags(&r.tags)?;
        self.edit_tags(&r.resource_arn, |tags| {
            merge_tags(tags, r.tags.clone());
            validate_tags(tags)
        })
        .await?;
        Ok(TagResourceResponse {})
    }

    pub(crate) async fn untag_resource(
        &self,
        r: UntagResourceRequest,
    ) -> Result<UntagResourceResponse, EcsError> {
        self.edit_tags(&r.resource_arn, |tags| {
            tags.retain(|t| !r.tag_keys.contains(&t.key));
            Ok(())
        })
        .await?;
        Ok(UntagResourceResponse {})
    }

    pub(crate) async fn list_tags_for_resource(
        &self,
        r: ListTagsForResourceRequest,
    ) -> Result<ListTagsForResourceResponse, EcsError> {
        let tags = self.edit_tags(&r.resource_arn, |_| Ok(())).await?;
        Ok(ListTagsForResourceResponse { tags })
    }

    /// Applies `edit` to the tags of the resource `arn` names and returns them; an
    /// edit that changes nothing writes nothing.
    async fn edit_tags(
        &self,
        arn: &str,
        edit: impl Fn(&mut Vec<Tag>) -> Result<(), EcsError>,
    ) -> Result<Vec<Tag>, EcsError> {
        let not_found = || {
            EcsError::ResourceNotFound(format!(
                "The specified resource {arn} was not found: check the ARN."
            ))
        };
        match self.scope().parse(arn)? {
            Resource::Cluster(name) => self
                .edit_json::<Cluster>(&cluster_key(&name), |c| &mut c.tags, &edit)
                .await?
                .ok_or_else(EcsError::cluster_not_found),
            Resource::TaskDefinition { family, revision } => self
                .edit_json::<StoredTaskDefinition>(
                    &revision_key(&family, revision),
                    |d| &mut d.tags,
                    &edit,
                )
                .await?
                .ok_or_else(not_found),
            Resource::Task { cluster, id } => self
                .edit_json::<TaskRecord>(&task_key(&cluster, &id), |t| &mut t.task.tags, &edit)
                .await?
                .ok_or_else(not_found),
            Resource::Service { cluster, name } => self
                .edit_json::<ServiceRecord>(
                    &service_key(&cluster, &name),
                    |s| &mut s.service.tags,
                    &edit,
                )
                .await?
                .ok_or_else(not_found),
        }
    }

    async fn edit_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        tags_of: impl Fn(&mut T) -> &mut Vec<Tag>,
        edit: &impl Fn(&mut Vec<Tag>) -> Result<(), EcsError>,
    ) -> Result<Option<Vec<Tag>>, EcsError> {
        loop {
            let Some(current) = self.store().get_json::<T>(key).await.map_err(internal)? else {
                return Ok(None);
            };
            let mut value = current.value;
            let before = tags_of(&mut value).clone();
            edit(tags_of(&mut value))?;
            let after = tags_of(&mut value).clone();
            if before == after {
                return Ok(Some(after));
            }
            match self
                .store()
                .put_json(key, &value, Expect::Revision(current.mod_revision))
                .await
            {
                Ok(_) => return Ok(Some(after)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
    }
}
