<?php
// Two tasks at once, every event reported by a callback: created (with its job handle),
// data, status, complete and fail. runTasks() returns when both are over.
declare(strict_types=1);
require __DIR__ . '/servers.php';

$client = new GearmanClient();
$client->addServers(gearman_servers());

$client->setCreatedCallback(function (GearmanTask $task): void {
    echo 'CREATED: ', $task->jobHandle(), "\n";
});
$client->setDataCallback(function (GearmanTask $task): void {
    echo 'DATA: ', $task->data(), "\n";
});
$client->setStatusCallback(function (GearmanTask $task): void {
    echo 'STATUS: ', $task->jobHandle(), ' - ', $task->taskNumerator(), '/',
         $task->taskDenominator(), "\n";
});
$client->setCompleteCallback(function (GearmanTask $task): void {
    echo 'COMPLETE: ', $task->jobHandle(), ', ', $task->data(), "\n";
});
$client->setFailCallback(function (GearmanTask $task): void {
    echo 'FAILED: ', $task->jobHandle(), "\n";
});

$client->addTask('reverse', 'foo');
$client->addTaskLow('reverse', 'bar');      // a lower priority; both still run at once
if (!$client->runTasks()) {
    echo 'Error: ', $client->error(), "\n";
    exit(1);
}
echo "DONE\n";
