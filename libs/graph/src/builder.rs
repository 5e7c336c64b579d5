//! Putting a graph together: nodes under names, one outgoing edge per node, an entry, all
//! checked once by [`GraphBuilder::build`] so that a graph that runs is well formed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::engine::Graph;
use crate::node::Node;

/// Where a run goes after a node, as a conditional edge's router decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// To the named node.
    To(&'static str),
    /// To the end: the run is finished.
    End,
    /// Stop the run for the caller to settle something; it goes on at `node` when resumed
    /// (unless the caller names another node then).
    Interrupt {
        /// The node to go on with.
        node: &'static str,
        /// Why the run stopped, for the caller (e.g. the tool calls awaiting approval).
        reason: serde_json::Value,
    },
}

/// A router: reads the state a node left and says where to go.
type Router<S> = Box<dyn Fn(&S) -> Route + Send + Sync>;

/// A node as the graph holds it, shareable between the builder's checks and the graph.
type SharedNode<S, C, E> = Arc<dyn Node<S, C, E>>;

/// A node's outgoing edge.
pub(crate) enum Edge<S> {
    /// Always to this node.
    To(&'static str),
    /// Always to the end.
    End,
    /// Wherever the router says.
    Conditional(Router<S>),
}

impl<S> Edge<S> {
    /// Where to go from a node that left `state`.
    pub(crate) fn route(&self, state: &S) -> Route {
        match self {
            Self::To(node) => Route::To(node),
            Self::End => Route::End,
            Self::Conditional(router) => router(state),
        }
    }
}

/// A node of a built graph with its outgoing edge.
pub(crate) struct Slot<S, C, E> {
    /// The node's work.
    pub(crate) node: SharedNode<S, C, E>,
    /// Where to go after it.
    pub(crate) edge: Edge<S>,
}

/// Why a graph could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// [`GraphBuilder::entry`] was never called.
    #[error("the graph has no entry node")]
    NoEntry,
    /// The entry names no node of the graph.
    #[error("the entry node {0:?} is not a node of the graph")]
    UnknownEntry(&'static str),
    /// Two nodes were added under one name.
    #[error("node {0:?} is added twice")]
    DuplicateNode(&'static str),
    /// An edge leaves a name that is no node of the graph.
    #[error("an edge leaves {0:?}, which is not a node of the graph")]
    EdgeFromUnknownNode(&'static str),
    /// An edge leads to a name that is no node of the graph.
    #[error("the edge from {from:?} leads to {to:?}, which is not a node of the graph")]
    EdgeToUnknownNode {
        /// The node the edge leaves.
        from: &'static str,
        /// The unknown name it leads to.
        to: &'static str,
    },
    /// A node was given more than one outgoing edge.
    #[error("node {0:?} has more than one outgoing edge")]
    SeveralEdges(&'static str),
    /// A node was given no outgoing edge.
    #[error("node {0:?} has no outgoing edge")]
    NoEdge(&'static str),
}

/// Collects nodes and edges; [`build`](Self::build) checks them and makes a [`Graph`].
/// Names are `&'static str` so that routers can name nodes without allocating.
pub struct GraphBuilder<S, C, E> {
    /// Nodes in the order added (kept in order so that errors are reported the same way
    /// every time).
    nodes: Vec<(&'static str, SharedNode<S, C, E>)>,
    /// Edges in the order added, by the node they leave.
    edges: Vec<(&'static str, Edge<S>)>,
    /// The node a run starts at.
    entry: Option<&'static str>,
}

impl<S, C, E> Default for GraphBuilder<S, C, E> {
    fn default() -> Self {
        Self { nodes: Vec::new(), edges: Vec::new(), entry: None }
    }
}

impl<S, C, E> GraphBuilder<S, C, E> {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node` under `name`.
    pub fn node(mut self, name: &'static str, node: impl Node<S, C, E> + 'static) -> Self {
        self.nodes.push((name, Arc::new(node)));
        self
    }

    /// Makes `name` the node a run starts at.
    pub fn entry(mut self, name: &'static str) -> Self {
        self.entry = Some(name);
        self
    }

    /// After `from`, always go to `to`.
    pub fn edge(mut self, from: &'static str, to: &'static str) -> Self {
        self.edges.push((from, Edge::To(to)));
        self
    }

    /// After `from`, the run is finished.
    pub fn end_after(mut self, from: &'static str) -> Self {
        self.edges.push((from, Edge::End));
        self
    }

    /// After `from`, go where `router` says, given the state `from` left. A node the router
    /// names that is not in the graph ends the run with
    /// [`NodeFailure::UnknownNode`](crate::NodeFailure::UnknownNode).
    pub fn conditional(mut self, from: &'static str, router: impl Fn(&S) -> Route + Send + Sync + 'static) -> Self {
        self.edges.push((from, Edge::Conditional(Box::new(router))));
        self
    }

    /// Checks the graph: an entry that is a node, unique node names, exactly one outgoing
    /// edge per node, and edges between nodes of the graph. The first problem found is
    /// returned.
    pub fn build(self) -> Result<Graph<S, C, E>, GraphError> {
        let mut nodes: HashMap<&'static str, SharedNode<S, C, E>> = HashMap::with_capacity(self.nodes.len());
        for (name, node) in self.nodes.iter().cloned() {
            if nodes.insert(name, node).is_some() {
                return Err(GraphError::DuplicateNode(name));
            }
        }
        let entry = self.entry.ok_or(GraphError::NoEntry)?;
        if !nodes.contains_key(entry) {
            return Err(GraphError::UnknownEntry(entry));
        }
        let mut edges: HashMap<&'static str, Edge<S>> = HashMap::with_capacity(self.edges.len());
        for (from, edge) in self.edges {
            if !nodes.contains_key(from) {
                return Err(GraphError::EdgeFromUnknownNode(from));
            }
            if let Edge::To(to) = edge
                && !nodes.contains_key(to)
            {
                return Err(GraphError::EdgeToUnknownNode { from, to });
            }
            match edges.entry(from) {
                Entry::Occupied(_) => return Err(GraphError::SeveralEdges(from)),
                Entry::Vacant(vacant) => {
                    vacant.insert(edge);
                }
            }
        }
        let mut slots = HashMap::with_capacity(nodes.len());
        for (name, _) in &self.nodes {
            let (Some(node), Some(edge)) = (nodes.remove(name), edges.remove(name)) else {
                return Err(GraphError::NoEdge(name));
            };
            slots.insert(*name, Slot { node, edge });
        }
        Ok(Graph::new(entry, slots))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use async_trait::async_trait;

    use super::*;
    use crate::node::Step;

    struct Noop;

    #[async_trait]
    impl Node<(), (), ()> for Noop {
        async fn run(&self, _state: &mut (), _step: &Step<'_, ()>) -> Result<(), ()> {
            Ok(())
        }
    }

    fn two_nodes() -> GraphBuilder<(), (), ()> {
        GraphBuilder::new().node("a", Noop).node("b", Noop)
    }

    fn error_of(builder: GraphBuilder<(), (), ()>) -> GraphError {
        builder.build().err().expect("the graph should be refused")
    }

    #[test]
    fn a_well_formed_graph_builds() {
        let built = two_nodes().entry("a").edge("a", "b").conditional("b", |_| Route::To("a")).build();
        assert!(built.is_ok());
    }

    #[test]
    fn a_graph_needs_an_entry_that_is_a_node() {
        assert_eq!(error_of(two_nodes().edge("a", "b").end_after("b")), GraphError::NoEntry);
        assert_eq!(error_of(two_nodes().entry("c").edge("a", "b").end_after("b")), GraphError::UnknownEntry("c"));
    }

    #[test]
    fn node_names_are_unique() {
        let builder = two_nodes().node("a", Noop).entry("a").edge("a", "b").end_after("b");
        assert_eq!(error_of(builder), GraphError::DuplicateNode("a"));
    }

    #[test]
    fn edges_join_nodes_of_the_graph() {
        let builder = two_nodes().entry("a").edge("a", "b").end_after("b").end_after("c");
        assert_eq!(error_of(builder), GraphError::EdgeFromUnknownNode("c"));
        let builder = two_nodes().entry("a").edge("a", "c").end_after("b");
        assert_eq!(error_of(builder), GraphError::EdgeToUnknownNode { from: "a", to: "c" });
    }

    #[test]
    fn every_node_has_exactly_one_outgoing_edge() {
        let builder = two_nodes().entry("a").edge("a", "b").conditional("a", |_| Route::End).end_after("b");
        assert_eq!(error_of(builder), GraphError::SeveralEdges("a"));
        assert_eq!(error_of(two_nodes().entry("a").edge("a", "b")), GraphError::NoEdge("b"));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            GraphError::EdgeToUnknownNode { from: "llm", to: "tool" }.to_string(),
            "the edge from \"llm\" leads to \"tool\", which is not a node of the graph"
        );
    }
}
